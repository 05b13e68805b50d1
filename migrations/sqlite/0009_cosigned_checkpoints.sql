-- Checkpoints with the witness cosignatures gathered for them, by size.
CREATE TABLE cosigned_checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
