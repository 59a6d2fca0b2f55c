-- Claims that prefer the checkpoint a backend has loaded walk this index in queue order instead of sorting.
CREATE INDEX shots_queued_checkpoint_idx ON shots ((params->>'checkpoint'), priority DESC, created_at, position)
    WHERE status = 'queued';
