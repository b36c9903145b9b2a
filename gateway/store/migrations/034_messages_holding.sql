-- The messages that still hold their content: the housekeeping's search for finished ones to
-- free (QueueStore.drop_finished_content) read the whole `messages` table every minute, kept
-- for years, under the store's write lock (0.8-1.9 s a run at 8 million messages; every
-- end-of-DATA commit waited behind it).
CREATE INDEX messages_holding ON messages(received_at) WHERE content IS NOT NULL;
