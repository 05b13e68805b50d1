-- Checkpoints with the witness cosignatures gathered for them, by size,
-- and how many witnesses cosigned (the note with the most is kept).
CREATE TABLE cosigned_checkpoints (
    size INTEGER PRIMARY KEY,
    cosigners INTEGER NOT NULL,
    note TEXT NOT NULL
);
