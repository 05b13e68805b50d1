-- Checkpoints with the witness cosignatures gathered for them, by size.
CREATE TABLE cosigned_checkpoints (
    size BIGINT PRIMARY KEY,
    note TEXT NOT NULL
);
