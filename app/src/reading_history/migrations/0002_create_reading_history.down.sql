DROP TABLE reading_history;
