-- Dashboard users, their sessions and personal tokens, login throttling, the audit log, and a
-- site per gateway (for site-scoped users). Never edit once applied: add a new migration.

CREATE TABLE users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    role           text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    sites          text[],                   -- NULL: every site; else only these sites
    password_hash  text NOT NULL,            -- argon2id (argon2-cffi encoded form)
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Personal API tokens (sent as "Authorization: Bearer"); only a SHA-256 of the token is kept:
-- the token is 256 random bits, so a slow hash would add nothing but latency per request.
CREATE TABLE user_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash    text NOT NULL UNIQUE,
    label         text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX user_tokens_user ON user_tokens (user_id);

-- Browser sessions live in the database, so any receiver behind a load balancer accepts them.
CREATE TABLE sessions (
    id_hash       text PRIMARY KEY,          -- SHA-256 hex of the cookie value
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token    text NOT NULL,
    address       text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Failed logins by key ("user:NAME" / "ip:ADDRESS"); counted over a sliding window.
CREATE TABLE login_failures (
    key  text NOT NULL,
    ts   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_key_ts ON login_failures (key, ts);

CREATE TABLE audit (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,                -- user name, "admin-token", or the name tried
    auth_kind  text NOT NULL DEFAULT '',     -- session, token, admin_token, cli, '' (none)
    action     text NOT NULL,                -- login, login_failed, logout, user.add, ...
    target     text NOT NULL DEFAULT '',
    outcome    text NOT NULL,                -- ok, denied, rate_limited, failed, ...
    address    text NOT NULL DEFAULT '',
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_ts ON audit (ts, id);

ALTER TABLE gateways ADD COLUMN site text;
CREATE INDEX gateways_site ON gateways (site);

-- The latest transition of every alarm, kept by a trigger on events (only events carrying
-- base_to, i.e. alarm transitions and operator actions on alarms), so the alarm console reads
-- one row per alarm instead of scanning the whole event history. Events arrive at most once
-- (ON CONFLICT DO NOTHING fires no trigger); an older event arriving late changes nothing.
CREATE TABLE alarm_latest (
    gateway_id    text NOT NULL,
    alarm_id      text NOT NULL,             -- the event's source (the agent's alarm id)
    event_id      bigint NOT NULL,
    ts            timestamptz NOT NULL,
    kind          text NOT NULL,             -- kind of the last event: alarm, operator.ack, ...
    actor         text NOT NULL,
    base_state    text NOT NULL,             -- normal, unack_active, ack_active, rtn_unack
    state         text NOT NULL,             -- display state (shelved, suppressed, ...)
    priority      text NOT NULL DEFAULT '',
    point_id      text,
    detail        jsonb NOT NULL,
    active_since  timestamptz,               -- when it last became active; NULL when not
    acked_by      text,
    acked_at      timestamptz,
    PRIMARY KEY (gateway_id, alarm_id)
);
CREATE INDEX alarm_latest_active ON alarm_latest (gateway_id, alarm_id)
    WHERE base_state IN ('unack_active', 'ack_active');

CREATE FUNCTION alarm_latest_upsert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    base text := NEW.detail ->> 'base_to';
    is_active boolean := (NEW.detail ->> 'base_to') IN ('unack_active', 'ack_active');
BEGIN
    INSERT INTO alarm_latest AS a (gateway_id, alarm_id, event_id, ts, kind, actor, base_state,
                                   state, priority, point_id, detail, active_since, acked_by,
                                   acked_at)
    VALUES (NEW.gateway_id, NEW.source, NEW.event_id, NEW.ts, NEW.kind, NEW.actor, base,
            coalesce(NEW.detail ->> 'to', base), coalesce(NEW.detail ->> 'priority', ''),
            NEW.detail ->> 'point_id', NEW.detail,
            CASE WHEN is_active THEN NEW.ts END,
            CASE WHEN NEW.kind = 'operator.ack' THEN NEW.actor END,
            CASE WHEN NEW.kind = 'operator.ack' THEN NEW.ts END)
    ON CONFLICT (gateway_id, alarm_id) DO UPDATE SET
        event_id = EXCLUDED.event_id, ts = EXCLUDED.ts, kind = EXCLUDED.kind,
        actor = EXCLUDED.actor, base_state = EXCLUDED.base_state, state = EXCLUDED.state,
        priority = EXCLUDED.priority, point_id = EXCLUDED.point_id, detail = EXCLUDED.detail,
        active_since = CASE
            WHEN NOT is_active THEN NULL
            WHEN a.base_state IN ('unack_active', 'ack_active') THEN a.active_since
            ELSE EXCLUDED.ts END,
        acked_by = CASE
            WHEN EXCLUDED.kind = 'operator.ack' THEN EXCLUDED.actor
            WHEN EXCLUDED.base_state = 'unack_active' THEN NULL
            ELSE a.acked_by END,
        acked_at = CASE
            WHEN EXCLUDED.kind = 'operator.ack' THEN EXCLUDED.ts
            WHEN EXCLUDED.base_state = 'unack_active' THEN NULL
            ELSE a.acked_at END
    WHERE (EXCLUDED.ts, EXCLUDED.event_id) > (a.ts, a.event_id);
    RETURN NULL;
END $$;

CREATE TRIGGER events_alarm_latest AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.detail ? 'base_to') EXECUTE FUNCTION alarm_latest_upsert();

-- "mode since": the newest mode change per gateway
CREATE INDEX events_mode_latest ON events (gateway_id, ts DESC)
    WHERE kind IN ('mode', 'operator.mode');
