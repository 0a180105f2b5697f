-- The guide's migration, for an existing application's own users table:
-- adds last_seen (timestamptz, default now(), not null) and an index on it.
-- Idempotent: safe to run again. The table name is a psql variable:
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v users_table=users \
--        -f migrations/sql/add_last_seen_column.sql
--
-- (presence's own tables are created by `presence migrate`, not by this file.)

\if :{?users_table}
\else
  \set users_table users
\endif

begin;

alter table :"users_table"
    add column if not exists last_seen timestamp with time zone not null default now();

select format('create index if not exists %I on %I (last_seen)',
              'idx_' || :'users_table' || '_last_seen', :'users_table') as create_index
\gset
:create_index;

comment on column :"users_table".last_seen is
    'when the user was last seen online (updated on connect and disconnect)';

commit;
