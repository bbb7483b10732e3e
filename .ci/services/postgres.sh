# shellcheck shell=bash
# A throwaway PostgreSQL server for the tests, sourced by .ci/run (or by hand: `cleanup_steps=(); . .ci/services/postgres.sh`).
# It installs PostgreSQL with apt-get where no `initdb` is found, runs the server as an unprivileged user
# (`lra-ci`, created if missing, when this shell is root; the server refuses to run as root), on loopback on a
# free port, in a temporary folder; creates the user `lra` (with a random password, allowed to create
# databases: each test makes its own) and the database `lra_test`; exports
#   LRA_TEST_POSTGRES_URL=postgresql://lra:<password>@127.0.0.1:<port>/lra_test
# and appends the server's stop and the folder's removal to the array `cleanup_steps`.

lra_pg_bin=""
for lra_pg_candidate in /usr/lib/postgresql/*/bin; do
    [ -x "$lra_pg_candidate/initdb" ] && lra_pg_bin=$lra_pg_candidate
done
if [ -z "$lra_pg_bin" ] && command -v initdb >/dev/null 2>&1; then
    lra_pg_bin=$(dirname "$(readlink -f "$(command -v initdb)")")
fi
if [ -z "$lra_pg_bin" ]; then
    echo "postgres: no initdb found; installing postgresql with apt-get"
    if [ "$(id -u)" -eq 0 ]; then lra_pg_sudo=(); else lra_pg_sudo=(sudo -n); fi
    "${lra_pg_sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${lra_pg_sudo[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    for lra_pg_candidate in /usr/lib/postgresql/*/bin; do
        [ -x "$lra_pg_candidate/initdb" ] && lra_pg_bin=$lra_pg_candidate
    done
fi
[ -n "$lra_pg_bin" ] || { echo "postgres: initdb still missing after apt-get install postgresql" >&2; return 1; }

lra_pg_dir=$(mktemp -d /tmp/lra-ci-postgres.XXXXXX)
if [ "$(id -u)" -eq 0 ]; then
    id lra-ci >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin lra-ci
    chown lra-ci "$lra_pg_dir"
    lra_pg_as=(runuser -u lra-ci --)
    lra_pg_owner=lra-ci
else
    lra_pg_as=()
    lra_pg_owner=$(id -un)
fi
lra_pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
lra_pg_password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')

(cd "$lra_pg_dir" && "${lra_pg_as[@]}" "$lra_pg_bin/initdb" -D "$lra_pg_dir/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --no-locale >"$lra_pg_dir/initdb.log" 2>&1) \
    || { cat "$lra_pg_dir/initdb.log" >&2; return 1; }
(cd "$lra_pg_dir" && "${lra_pg_as[@]}" "$lra_pg_bin/pg_ctl" -D "$lra_pg_dir/data" -l "$lra_pg_dir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $lra_pg_port -k $lra_pg_dir -c max_connections=200 -c fsync=off" start \
    >/dev/null) || { cat "$lra_pg_dir/server.log" >&2; return 1; }
cleanup_steps+=("(cd /tmp && ${lra_pg_as[*]} $lra_pg_bin/pg_ctl -D $lra_pg_dir/data -m fast -w stop >/dev/null); rm -rf $lra_pg_dir")

lra_pg_psql() { (cd "$lra_pg_dir" && "${lra_pg_as[@]}" "$lra_pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$lra_pg_dir" \
    -p "$lra_pg_port" -U postgres -d postgres "$@"); }
lra_pg_psql -c "CREATE ROLE lra LOGIN CREATEDB PASSWORD '$lra_pg_password'" \
    && lra_pg_psql -c "CREATE DATABASE lra_test OWNER lra" || return 1
export LRA_TEST_POSTGRES_URL="postgresql://lra:$lra_pg_password@127.0.0.1:$lra_pg_port/lra_test"
echo "postgres: PostgreSQL $("$lra_pg_bin/postgres" -V | awk '{print $3}') on 127.0.0.1:$lra_pg_port, run by" \
    "$lra_pg_owner, data in $lra_pg_dir; LRA_TEST_POSTGRES_URL exported"
unset -f lra_pg_psql
