-- Who changed or took away a user's data, and when: preference changes,
-- exports, deletions and token changes. Rows are only ever added.
CREATE TABLE audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    user_id bigint NOT NULL,
    action text NOT NULL,
    -- The token the request came with; none for the command line. The name is
    -- copied so that the entry still says who acted once the token is gone.
    token_id bigint,
    token_name text,
    request_id text,
    details jsonb NOT NULL DEFAULT '{}',

    CONSTRAINT audit_log_user_id_positive CHECK (user_id > 0),
    CONSTRAINT audit_log_action_known CHECK (
        action IN (
            'preferences_replaced',
            'preferences_updated',
            'history_exported',
            'history_entry_deleted',
            'history_deleted',
            'token_created',
            'token_revoked'
        )
    ),
    CONSTRAINT audit_log_details_object CHECK (jsonb_typeof(details) = 'object')
);

-- An account's trail, newest first.
CREATE INDEX audit_log_user_id_occurred_at_idx
    ON audit_log (user_id, occurred_at DESC);

COMMENT ON TABLE audit_log IS
    'Changes to and exports of reading-history data, with who made them.';
COMMENT ON COLUMN audit_log.details IS
    'What the action touched, such as changed field names or counts; never content.';
