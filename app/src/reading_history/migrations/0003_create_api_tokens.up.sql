-- Bearer tokens for the API, each acting for exactly one user. Only a digest of
-- each token is kept: whoever reads this table cannot call the API with it.
CREATE TABLE api_tokens (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL,
    name text NOT NULL,
    token_sha256 bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    last_used_at timestamptz,

    CONSTRAINT api_tokens_token_sha256_key UNIQUE (token_sha256),
    CONSTRAINT api_tokens_user_id_positive CHECK (user_id > 0),
    CONSTRAINT api_tokens_name_length CHECK (char_length(name) BETWEEN 1 AND 100),
    CONSTRAINT api_tokens_token_sha256_length CHECK (octet_length(token_sha256) = 32),
    CONSTRAINT api_tokens_revoked_after_created CHECK (revoked_at >= created_at)
);

-- A name picks out one live token of a user, so that it can be revoked by name.
CREATE UNIQUE INDEX api_tokens_user_id_name_live_key
    ON api_tokens (user_id, name)
    WHERE revoked_at IS NULL;

COMMENT ON TABLE api_tokens IS
    'Bearer tokens of the reading-history API; each may act for one user only.';
COMMENT ON COLUMN api_tokens.token_sha256 IS
    'SHA-256 of the token; the token itself is shown once, when it is created.';
COMMENT ON COLUMN api_tokens.last_used_at IS
    'Last accepted request, updated at most once a minute.';
