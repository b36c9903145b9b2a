-- When periodic tasks last ran, so a daily task stays daily across restarts.

CREATE TABLE maintenance (
    task    TEXT PRIMARY KEY,
    ran_at  REAL NOT NULL
) WITHOUT ROWID;
