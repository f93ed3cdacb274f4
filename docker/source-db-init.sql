-- The "legacy" shop database that change data capture reads (database `legacy`, schema `shop`).
-- Run by the source-db container on an empty volume (/docker-entrypoint-initdb.d, after
-- source-db-role.sh made the replication role `cdc`), and by `python -m kafka_assets.local up`
-- on every start of its source cluster: every statement is idempotent.
CREATE SCHEMA IF NOT EXISTS shop;

CREATE TABLE IF NOT EXISTS shop.customers (
    customer_id integer PRIMARY KEY,
    email text NOT NULL UNIQUE,
    full_name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS shop.products (
    product_id integer PRIMARY KEY,
    sku text NOT NULL UNIQUE,
    name text NOT NULL,
    price numeric(10, 2) NOT NULL CHECK (price >= 0)
);

CREATE TABLE IF NOT EXISTS shop.orders (
    order_id integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES shop.customers,
    product_id integer NOT NULL REFERENCES shop.products,
    quantity integer NOT NULL CHECK (quantity > 0),
    status text NOT NULL DEFAULT 'placed',
    ordered_at timestamptz NOT NULL DEFAULT now()
);

-- Updates and deletes carry the whole old row (Debezium's `before`), not only the key.
ALTER TABLE shop.customers REPLICA IDENTITY FULL;
ALTER TABLE shop.products REPLICA IDENTITY FULL;
ALTER TABLE shop.orders REPLICA IDENTITY FULL;

INSERT INTO shop.customers (customer_id, email, full_name) VALUES
    (1, 'ada@example.com', 'Ada Lovelace'),
    (2, 'grace@example.com', 'Grace Hopper'),
    (3, 'edsger@example.com', 'Edsger Dijkstra')
ON CONFLICT DO NOTHING;

INSERT INTO shop.products (product_id, sku, name, price) VALUES
    (1, 'KB-001', 'Keyboard', 49.90),
    (2, 'MS-002', 'Mouse', 19.50),
    (3, 'MN-003', 'Monitor', 189.00)
ON CONFLICT DO NOTHING;

INSERT INTO shop.orders (order_id, customer_id, product_id, quantity) VALUES
    (1, 1, 3, 1),
    (2, 2, 1, 2),
    (3, 3, 2, 1)
ON CONFLICT DO NOTHING;

-- Debezium's heartbeat writes here (heartbeat.action.query): a change in the publication that
-- is not captured, so the slot's confirmed position keeps moving while the shop is idle.
CREATE TABLE IF NOT EXISTS shop.cdc_heartbeat (
    id integer PRIMARY KEY,
    beat_at timestamptz NOT NULL
);

-- The replication role reads the snapshot; it owns nothing and creates no publication.
GRANT USAGE ON SCHEMA shop TO cdc;
GRANT SELECT ON shop.customers, shop.products, shop.orders TO cdc;
GRANT SELECT, INSERT, UPDATE ON shop.cdc_heartbeat TO cdc;

-- Created here by the tables' owner: Debezium runs with publication.autocreate.mode=disabled.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'kafka_assets_cdc') THEN
        CREATE PUBLICATION kafka_assets_cdc
            FOR TABLE shop.customers, shop.products, shop.orders, shop.cdc_heartbeat;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_publication_tables
        WHERE pubname = 'kafka_assets_cdc' AND schemaname = 'shop' AND tablename = 'cdc_heartbeat'
    ) THEN
        ALTER PUBLICATION kafka_assets_cdc ADD TABLE shop.cdc_heartbeat;
    END IF;
END
$$;
