-- One row per article a user read.
CREATE TABLE reading_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL,
    article_id bigint NOT NULL,
    feed_id bigint NOT NULL,
    category text,
    read_at timestamptz NOT NULL,
    duration_seconds integer,
    scroll_depth smallint,
    created_at timestamptz NOT NULL DEFAULT now(),

    -- Forgetting a user's preferences forgets what they read.
    CONSTRAINT reading_history_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES user_reading_preferences (user_id)
        ON DELETE CASCADE,
    CONSTRAINT reading_history_article_id_positive CHECK (article_id > 0),
    CONSTRAINT reading_history_feed_id_positive CHECK (feed_id > 0),
    CONSTRAINT reading_history_category_not_empty CHECK (category <> ''),
    CONSTRAINT reading_history_duration_seconds_not_negative
        CHECK (duration_seconds >= 0),
    CONSTRAINT reading_history_scroll_depth_percent
        CHECK (scroll_depth BETWEEN 0 AND 100)
);

-- Listing, cursor pagination and export walk one user's reads newest first;
-- this index also serves the foreign key when a user is deleted.
CREATE INDEX reading_history_user_read_at_idx
    ON reading_history (user_id, read_at DESC, id DESC);

-- Listing filtered by category.
CREATE INDEX reading_history_user_category_read_at_idx
    ON reading_history (user_id, category, read_at DESC, id DESC)
    WHERE category IS NOT NULL;

COMMENT ON TABLE reading_history IS
    'Articles read by each user of the reading-history service.';
COMMENT ON COLUMN reading_history.scroll_depth IS
    'How far down the article the user scrolled, in percent.';
