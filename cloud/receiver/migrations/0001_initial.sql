-- Initial schema. Never edit this file once applied anywhere: add a new numbered migration.

CREATE TABLE gateways (
    id              text PRIMARY KEY,
    token_hash      text UNIQUE,              -- SHA-256 hex of the gateway token; NULL until enrolled
    enrolled_at     timestamptz,
    revoked_at      timestamptz,
    last_seen       timestamptz,
    last_heartbeat  jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE enrollment_tokens (
    token_hash  text PRIMARY KEY,             -- SHA-256 hex; the token itself is never stored
    gateway_id  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX enrollment_tokens_gateway ON enrollment_tokens (gateway_id);

CREATE TABLE points (
    key               integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gateway_id        text NOT NULL,
    point_id          text NOT NULL,
    device            text NOT NULL DEFAULT '',
    units             text NOT NULL DEFAULT '',
    description       text NOT NULL DEFAULT '',
    data_type         text,
    tags              jsonb NOT NULL DEFAULT '{}',
    limits            jsonb NOT NULL DEFAULT '{}', -- min, max, alarm_hh/h/l/ll/state, alarm_priority
    writable          boolean NOT NULL DEFAULT false,
    schedule_version  text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (gateway_id, point_id)
);

-- No foreign key to points: a per-row FK check costs ~20 % of ingest throughput, and points
-- are never deleted (the receiver creates a point row before inserting its readings).
CREATE TABLE readings (
    time       timestamptz NOT NULL,
    point_key  integer NOT NULL,
    value      double precision,
    quality    smallint NOT NULL,
    CONSTRAINT readings_point_time UNIQUE (point_key, time)
);
-- Time-ordered appends make BRIN tiny and effective for fleet-wide time ranges; per-point
-- queries use the unique btree (point_key, time).
CREATE INDEX readings_time_brin ON readings USING brin (time);

CREATE TABLE events (
    gateway_id  text NOT NULL,
    event_id    bigint NOT NULL,
    ts          timestamptz NOT NULL,
    kind        text NOT NULL,
    source      text NOT NULL DEFAULT '',
    actor       text NOT NULL DEFAULT '',
    detail      jsonb NOT NULL DEFAULT '{}',
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, event_id)
);
CREATE INDEX events_ts ON events (ts);

CREATE TABLE ingest_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gateway_id   text NOT NULL,
    first_seq    bigint NOT NULL,
    last_seq     bigint NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    inserted     integer NOT NULL,
    duplicate    integer NOT NULL,
    events       integer NOT NULL DEFAULT 0
);
CREATE INDEX ingest_log_gateway ON ingest_log (gateway_id, received_at);

CREATE TABLE commands (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gateway_id    text NOT NULL,
    kind          text NOT NULL,
    args          jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL DEFAULT '',
    delivered_at  timestamptz
);
CREATE INDEX commands_pending ON commands (gateway_id, id) WHERE delivered_at IS NULL;
