-- The intake is written and emptied all the time and holds almost nothing live: vacuum it
-- after a thousand dead rows, not after a fifth of its size, so that its pages stay few.
ALTER TABLE event_intake SET (
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_cost_delay = 0
);
