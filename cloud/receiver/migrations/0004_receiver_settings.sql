-- Properties of the database itself, set only by an explicit act (`outpost cloud retention`,
-- `serve --retention-days`), never as a side effect of another command opening the database.
CREATE TABLE receiver_settings (
    key         text PRIMARY KEY,
    value       text NOT NULL,
    set_by      text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
