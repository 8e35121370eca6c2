-- scripts/demo-sql/publisher.sql — the publisher's side of the demo: the tables (schema.sql),
-- sample data, a login role for the subscriber and the publication `demo_pub`.
-- psql variable: repl_password (password of the role demo_repl). Run by init-node.sh, i.e. by
-- scripts/demo and by the compose publisher's /docker-entrypoint-initdb.d. Safe to rerun: data is
-- only seeded into empty tables and existing objects are kept.
\set ON_ERROR_STOP on
\ir schema.sql

-- Sample data: 1000 accounts, 5000 orders, a few events.
INSERT INTO shop.accounts (id, owner, balance, vip, updated_at)
SELECT g, 'customer ' || g, (g * 37 % 1000) + 0.25, g % 10 = 0,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
FROM generate_series(1, 1000) AS g
ON CONFLICT (id) DO NOTHING;

INSERT INTO shop.orders (account_id, amount, status, items, created_at)
SELECT g % 1000 + 1, (g * 7919 % 50000) / 100.0,
       CASE WHEN g % 3 = 0 THEN 'shipped' ELSE 'new' END,
       jsonb_build_array(jsonb_build_object('sku', 'sku-' || g % 50, 'qty', g % 4 + 1)),
       timestamptz '2024-02-01 00:00:00+00' + g * interval '10 seconds'
FROM generate_series(1, 5000) AS g
WHERE NOT EXISTS (SELECT 1 FROM shop.orders);

INSERT INTO shop.events (at, kind, payload)
SELECT timestamptz '2024-03-01 00:00:00+00' + g * interval '1 second', 'seed',
       jsonb_build_object('n', g)
FROM generate_series(1, 100) AS g
WHERE NOT EXISTS (SELECT 1 FROM shop.events);

-- The subscriber logs in as demo_repl: it may replicate (create the slot, stream) and read the
-- published tables (initial copy), nothing else.
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'demo_repl') AS need_role \gset
\if :need_role
CREATE ROLE demo_repl LOGIN REPLICATION;
\endif
ALTER ROLE demo_repl PASSWORD :'repl_password';
GRANT USAGE ON SCHEMA shop TO demo_repl;
GRANT SELECT ON ALL TABLES IN SCHEMA shop TO demo_repl;

SELECT NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'demo_pub') AS need_pub \gset
\if :need_pub
CREATE PUBLICATION demo_pub FOR TABLE shop.accounts, shop.orders, shop.events;
\endif
