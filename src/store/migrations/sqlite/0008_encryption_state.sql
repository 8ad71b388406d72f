-- Tandem schema v8 (SQLite dialect): whether every value of the sealed columns is known to be
-- sealed (src/store/crypto.rs). While `sealed_only` is 1, a value without the `tdm1:` envelope
-- is refused instead of read as plaintext from before encryption (TANDEM_REQUIRE_SEALED).
--
-- Set here when no plaintext value exists yet: a new database, or one written only by
-- versions that seal. A database that still holds plaintext rows starts at 0 and is switched
-- on by `tandem rotate-data-key` once it has sealed them all. Versions that wrote plaintext
-- cannot open a database at this version, so none can add plaintext afterwards.
CREATE TABLE encryption_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    sealed_only INTEGER NOT NULL CHECK (sealed_only IN (0, 1))
);
INSERT INTO encryption_state (id, sealed_only)
SELECT 1, CASE WHEN
        NOT EXISTS (SELECT 1 FROM messages WHERE substr(original_text, 1, 5) <> 'tdm1:')
    AND NOT EXISTS (SELECT 1 FROM messages WHERE substr(translated_text, 1, 5) <> 'tdm1:')
    AND NOT EXISTS (SELECT 1 FROM documents WHERE substr(content, 1, 5) <> 'tdm1:')
    AND NOT EXISTS (SELECT 1 FROM actions WHERE substr(data, 1, 5) <> 'tdm1:')
    AND NOT EXISTS (SELECT 1 FROM webhook_outbox WHERE substr(payload, 1, 5) <> 'tdm1:')
    THEN 1 ELSE 0 END;
