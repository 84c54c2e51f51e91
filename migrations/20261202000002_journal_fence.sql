-- The ordering fence of the write-behind flusher: a batch's closing statement calls it
-- with the stored journal number and the number the batch follows (its first record's
-- less one); while the batch before is not stored, the whole statement fails as a
-- serialization failure (40001), which the flusher retries in order.
CREATE FUNCTION stockline_journal_fence(stored BIGINT, needed BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
BEGIN
  IF stored < needed THEN
    RAISE EXCEPTION 'journal records up to % are not stored yet (stored: %)', needed, stored
      USING ERRCODE = '40001';
  END IF;
  RETURN stored;
END
$$;
