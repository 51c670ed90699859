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

-- The alarm console asks for the latest transition of every alarm (events carrying base_to).
CREATE INDEX events_alarm_latest ON events (gateway_id, source, ts DESC, event_id DESC)
    WHERE detail ? 'base_to';
