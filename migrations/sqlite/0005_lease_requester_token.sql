-- Which token asked for a held call (its `jti`), for the approvers' review.
ALTER TABLE leases ADD COLUMN requester_token TEXT;
