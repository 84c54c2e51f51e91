-- Journal records PostgreSQL refused for their data (not for a lost connection): kept here
-- with the refusal, so that one bad record never stops the flusher and nothing is lost
-- without a trace. `record` is the record as the server held it (Rust debug text, in which
-- control characters are escaped); `lsn` is its journal number.
CREATE TABLE dead_letters (
    lsn        BIGINT PRIMARY KEY,
    kind       TEXT NOT NULL,
    record     TEXT NOT NULL,
    error      TEXT NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
