-- A break-glass grant opens one patient's appointments, not every appointment.
-- Grants made before this column existed have none and open nothing.
ALTER TABLE break_glass ADD COLUMN patient_id INTEGER REFERENCES accounts(id);
