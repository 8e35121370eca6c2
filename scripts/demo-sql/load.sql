-- scripts/demo-sql/load.sql — one transaction of the demo's write load, as a pgbench script
-- (pgbench -f load.sql; run by load.sh). Every transaction updates an account, inserts an order
-- and an event; one in 20 deletes the oldest order, three in 20 ship the oldest new order.
\set aid random(1, 1000)
\set cents random(100, 50000)
\set r random(1, 20)
BEGIN;
UPDATE shop.accounts SET balance = balance + :cents / 100.0, updated_at = now() WHERE id = :aid;
INSERT INTO shop.orders (account_id, amount, items) VALUES (:aid, :cents / 100.0, jsonb_build_array(jsonb_build_object('sku', 'sku-' || :r, 'qty', :r % 4 + 1)));
INSERT INTO shop.events (kind, payload) VALUES ('order', jsonb_build_object('account', :aid, 'cents', :cents));
\if :r = 1
DELETE FROM shop.orders WHERE id = (SELECT min(id) FROM shop.orders);
\elif :r <= 4
UPDATE shop.orders SET status = 'shipped' WHERE id = (SELECT min(id) FROM shop.orders WHERE status = 'new');
\endif
COMMIT;
