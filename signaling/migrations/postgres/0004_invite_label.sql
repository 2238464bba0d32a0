-- The name a guest is invited under (sealed like display names): what the doctor sees
-- in the waiting room, so a forwarded link shows up as someone else's name.
ALTER TABLE invites ADD COLUMN label BYTEA;
