DROP TABLE user_reading_preferences;
