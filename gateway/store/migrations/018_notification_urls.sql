-- The outbox kept each notification's notify_url as written, a basic-auth password or a
-- token in its query with it (an old row kept an old password after a rotation). Rows now
-- keep the URL as shown (store/notifications.py NOTIFY_SQL); the ones already there too.
UPDATE notifications SET url = shown_url(url) WHERE url != shown_url(url);
