CREATE TABLE customers (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    email       TEXT NOT NULL UNIQUE,
    country     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE products (
    id           INTEGER PRIMARY KEY,
    sku          TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    price_cents  INTEGER NOT NULL CHECK (price_cents >= 0),
    stock        INTEGER NOT NULL CHECK (stock >= 0)
);
CREATE TABLE orders (
    id           INTEGER PRIMARY KEY,
    customer_id  INTEGER NOT NULL REFERENCES customers (id),
    product_id   INTEGER NOT NULL REFERENCES products (id),
    quantity     INTEGER NOT NULL CHECK (quantity > 0),
    status       TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'shipped', 'cancelled', 'refunded')),
    ordered_at   TEXT NOT NULL
);
CREATE INDEX orders_customer ON orders (customer_id);

INSERT INTO customers (id, name, email, country, created_at) VALUES
    (1, 'Ada Lovelace', 'ada@example.com', 'GB', '2025-01-14T09:12:00Z'),
    (2, 'Grace Hopper', 'grace@example.com', 'US', '2025-02-03T16:40:00Z'),
    (3, 'Alan Turing', 'alan@example.com', 'GB', '2025-02-21T11:05:00Z'),
    (4, 'Katherine Johnson', 'katherine@example.com', 'US', '2025-03-09T08:30:00Z'),
    (5, 'Edsger Dijkstra', 'edsger@example.com', 'NL', '2025-04-17T13:55:00Z'),
    (6, 'Barbara Liskov', 'barbara@example.com', 'US', '2025-05-02T10:20:00Z'),
    (7, 'Donald Knuth', 'don@example.com', 'US', '2025-06-11T19:45:00Z'),
    (8, 'Frances Allen', 'frances@example.com', 'US', '2025-07-23T07:15:00Z'),
    (9, 'Tony Hoare', 'tony@example.com', 'GB', '2025-08-30T14:00:00Z'),
    (10, 'Margaret Hamilton', 'margaret@example.com', 'US', '2025-09-18T12:10:00Z');

INSERT INTO products (id, sku, name, price_cents, stock) VALUES
    (1, 'KB-001', 'Mechanical keyboard', 12900, 42),
    (2, 'MS-002', 'Wireless mouse', 3900, 120),
    (3, 'MN-003', '27-inch monitor', 32900, 15),
    (4, 'HD-004', 'Noise-cancelling headset', 19900, 30),
    (5, 'DK-005', 'USB-C dock', 15900, 25),
    (6, 'CB-006', 'Braided USB-C cable', 1500, 400),
    (7, 'LP-007', 'Laptop stand', 4900, 60),
    (8, 'WC-008', '4K webcam', 8900, 0);

INSERT INTO orders (id, customer_id, product_id, quantity, status, ordered_at) VALUES
    (1, 1, 1, 1, 'shipped', '2025-03-01T10:00:00Z'),
    (2, 1, 6, 3, 'shipped', '2025-03-01T10:00:00Z'),
    (3, 2, 3, 2, 'paid', '2025-03-15T12:30:00Z'),
    (4, 3, 2, 1, 'cancelled', '2025-04-02T09:45:00Z'),
    (5, 4, 4, 1, 'shipped', '2025-04-20T17:05:00Z'),
    (6, 5, 5, 1, 'refunded', '2025-05-11T08:25:00Z'),
    (7, 6, 7, 2, 'shipped', '2025-06-06T15:50:00Z'),
    (8, 7, 1, 1, 'paid', '2025-07-01T11:11:00Z'),
    (9, 7, 3, 1, 'pending', '2025-07-02T11:12:00Z'),
    (10, 8, 2, 4, 'shipped', '2025-08-08T13:30:00Z'),
    (11, 9, 6, 10, 'paid', '2025-09-09T09:09:00Z'),
    (12, 10, 8, 1, 'pending', '2025-10-10T10:10:00Z'),
    (13, 2, 5, 1, 'shipped', '2025-10-21T14:45:00Z'),
    (14, 3, 4, 2, 'paid', '2025-11-01T16:00:00Z'),
    (15, 4, 7, 1, 'pending', '2025-11-15T18:20:00Z');
