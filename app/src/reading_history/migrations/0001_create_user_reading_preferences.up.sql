-- Each user's privacy choices. A user without a row has the defaults below;
-- recording a read creates the row, so that reading_history can refer to it.
CREATE TABLE user_reading_preferences (
    user_id bigint PRIMARY KEY,
    tracking_enabled boolean NOT NULL DEFAULT true,
    retention_days integer,
    excluded_categories text[] NOT NULL DEFAULT '{}',
    default_export_format text NOT NULL DEFAULT 'json',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT user_reading_preferences_user_id_positive
        CHECK (user_id > 0),
    CONSTRAINT user_reading_preferences_retention_days_positive
        CHECK (retention_days > 0),
    CONSTRAINT user_reading_preferences_excluded_categories_no_nulls
        CHECK (array_position(excluded_categories, NULL) IS NULL),
    CONSTRAINT user_reading_preferences_default_export_format_known
        CHECK (default_export_format IN ('json', 'csv'))
);

COMMENT ON TABLE user_reading_preferences IS
    'Privacy choices of each user of the reading-history service.';
COMMENT ON COLUMN user_reading_preferences.retention_days IS
    'Reads older than this many days are forgotten; NULL keeps them all.';
COMMENT ON COLUMN user_reading_preferences.excluded_categories IS
    'Categories whose reads are never recorded, compared without regard to case.';
