-- Command lifecycle (queued -> delivered -> succeeded | failed | refused | expired) and
-- schedule rollouts. The commands table of 0001 only knew "delivered or not".

ALTER TABLE commands
    ADD COLUMN state        text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'delivered', 'succeeded', 'failed', 'refused', 'expired')),
    ADD COLUMN expires_at   timestamptz NOT NULL DEFAULT now() + interval '5 minutes',
    ADD COLUMN finished_at  timestamptz,
    ADD COLUMN result       jsonb,
    ADD COLUMN rollout_id   bigint;

-- Commands delivered under 0001 semantics count as delivered.
UPDATE commands SET state = 'delivered' WHERE delivered_at IS NOT NULL;

DROP INDEX IF EXISTS commands_pending;
-- The long-poll's question: this gateway's commands that are not final, by id.
CREATE INDEX commands_open ON commands (gateway_id, id)
    WHERE state IN ('queued', 'delivered');
CREATE INDEX commands_gateway_created ON commands (gateway_id, created_at);
CREATE INDEX commands_rollout ON commands (rollout_id) WHERE rollout_id IS NOT NULL;

CREATE TABLE rollouts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    state         text NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'succeeded', 'failed', 'aborted')),
    version       text NOT NULL,             -- content hash of the files (the loader's)
    files         jsonb NOT NULL,            -- {name: csv text}
    verification  jsonb NOT NULL,
    wave_size     integer NOT NULL,
    command_lifetime_s double precision NOT NULL,
    finished_at   timestamptz,
    reason        text NOT NULL DEFAULT ''   -- why it failed / was aborted
);

CREATE TABLE rollout_targets (
    rollout_id    bigint NOT NULL REFERENCES rollouts (id),
    gateway_id    text NOT NULL,
    position      integer NOT NULL,          -- application order; canaries first
    canary        boolean NOT NULL,
    state         text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'applying', 'succeeded', 'failed', 'skipped')),
    command_id    bigint,
    old_version   text,
    new_version   text,
    outcome       jsonb,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollout_id, gateway_id)
);

-- Every step of every rollout, in order: who started it, each gateway's old/new version,
-- each outcome, halts and aborts.
CREATE TABLE rollout_steps (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id    bigint NOT NULL REFERENCES rollouts (id),
    ts            timestamptz NOT NULL DEFAULT now(),
    gateway_id    text,
    step          text NOT NULL,
    actor         text NOT NULL,
    detail        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX rollout_steps_rollout ON rollout_steps (rollout_id, id);
