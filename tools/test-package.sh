#!/usr/bin/env bash
# The packaging check (CI; tools/test.sh runs it last). Builds dist/ with tools/package.sh, then:
#   the .deb: its version is `kaa --version`; lintian finds no error; the unit passes
#   `systemd-analyze verify`; `dpkg -i` makes the kaa user, /var/lib/kaa, the cluster key and the
#   admin token with their owners and modes, and a second install keeps them; the installed
#   /usr/bin/kaa runs as the unit runs it (user kaa, /etc/kaa/node.yaml, its ExecStart line, with
#   the addresses moved to free loopback ports), takes a sample snapshot with the admin token only,
#   scores it over HTTP, is backed up and restored as docs/operations.md says, and stops on
#   SIGTERM; `dpkg -r` keeps the data and keys, `dpkg -P` removes them (the kaa system user
#   stays, as Debian packages leave theirs);
#   the tarball: unpacked in an empty directory, bin/kaa loads no Swift library (ldd) and, with
#   the Swift toolchain hidden (a mount namespace), runs a node from etc/node.yaml as INSTALL says,
#   takes the sample and scores it.
# It must run as root on a machine without a kaa package, kaa user, /etc/kaa or /var/lib/kaa, and
# removes everything it installs or starts, on failure too.
# Usage: tools/test-package.sh [--no-build]   (--no-build: test the packages already in dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

build=true
case "${1:-}" in
  "") ;;
  --no-build) build=false ;;
  *) echo "usage: tools/test-package.sh [--no-build]" >&2; exit 2 ;;
esac

checks=0
pass() { checks=$((checks + 1)); echo "PASS: $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

[ "$(id -u)" -eq 0 ] || fail "tools/test-package.sh installs and purges the kaa package: run it as root"
# It installs and purges the package: never on a machine where kaa is in use.
if dpkg-query -W -f='${Status}' kaa 2>/dev/null | grep -qv "not-installed"; then
  fail "a kaa package is installed here; this check installs and purges kaa, so it runs only where kaa is not installed"
fi
for path in /etc/kaa /var/lib/kaa /usr/bin/kaa; do
  [ ! -e "$path" ] || fail "$path exists; this check installs and purges kaa, so it runs only where kaa is not installed"
done
! getent passwd kaa >/dev/null || fail "a user kaa exists; this check makes and deletes it, so it runs only where there is none"
! getent group kaa >/dev/null || fail "a group kaa exists; this check makes and deletes it, so it runs only where there is none"

work=$(mktemp -d /tmp/kaa-test-package.XXXXXX)
chmod 0755 "$work"
node_pid=""
installed=false
cleanup() {
  local status=$?
  set +e
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid"; wait "$node_pid" 2>/dev/null
  fi
  if $installed && dpkg-query -W -f='${Status}' kaa 2>/dev/null | grep -qv "not-installed"; then
    dpkg -P kaa >/dev/null 2>&1
  fi
  if $installed; then
    getent passwd kaa >/dev/null && deluser --system --quiet kaa >/dev/null 2>&1
    getent group kaa >/dev/null && delgroup --system --quiet kaa >/dev/null 2>&1
  fi
  rm -rf "$work"
  [ $status -eq 0 ] || echo "test-package: FAIL (after $checks checks passed)" >&2
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$SECONDS
if $build; then
  tools/package.sh
else
  tools/install-deps.sh
fi
version=$(sed -n 's/^ *public static let string = "\(.*\)"$/\1/p' Sources/KaaCore/KaaVersion.swift)
deb=dist/kaa_${version}_amd64.deb
tarball=dist/kaa-$version-linux-x86_64.tar.gz
[ -f "$deb" ] || fail "no $deb (tools/package.sh makes it)"
[ -f "$tarball" ] || fail "no $tarball (tools/package.sh makes it)"

# A TCP and UDP port on 127.0.0.1 that nothing uses now.
free_port() {
  python3 -c 'import socket
t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", p)); print(p)'
}

# Waits until the node answers ready (or has exited: then its log is shown).
wait_ready() {
  local url=$1 log=$2
  for _ in $(seq 600); do
    curl -sf "$url/v2/health/ready" >/dev/null && return 0
    kill -0 "$node_pid" 2>/dev/null || { cat "$log" >&2; fail "the node exited before it was ready"; }
    sleep 0.1
  done
  cat "$log" >&2
  fail "the node did not answer ready on $url in 60 s"
}

# Stops the node by its pid with SIGTERM and expects a clean exit.
stop_node() {
  local what=$1 log=$2 status=0
  kill -TERM "$node_pid"
  wait "$node_pid" || status=$?
  node_pid=""
  [ $status -eq 0 ] || { cat "$log" >&2; fail "$what exited with status $status on SIGTERM"; }
  pass "$what stops on SIGTERM with status 0"
}

# The sample: iris-logreg with its pipeline, built by the kaa under test.
sample=iris-logreg
sample_body='{"inputs": [{"name": "sepal_length", "shape": [1], "datatype": "FP32", "data": [5.1]},
  {"name": "sepal_width", "shape": [1], "datatype": "FP32", "data": [3.5]},
  {"name": "petal_length", "shape": [1], "datatype": "FP32", "data": [1.4]},
  {"name": "petal_width", "shape": [1], "datatype": "FP32", "data": [0.2]}]}'
build_sample() {
  "$1" snapshot build --model "snapshots/$sample/model.onnx" --pipeline "snapshots/$sample/pipeline.yaml" \
    --name "$sample" --version 1 --created-at 2026-01-01T00:00:00Z --out "$2" >/dev/null
}
# Publishes the sample with the token file given, scores one row over HTTP, checks the answer.
publish_and_score() {
  local kaa=$1 url=$2 token=$3 what=$4 code answer
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary "@$work/$sample.kaa" "$url/kaa/v1/snapshots/$sample/1")
  check "$what: an upload without a token is refused (HTTP $code)" test "$code" = 401
  env -u KAA_TOKEN KAA_TOKEN_FILE="$token" "$kaa" publish "$work/$sample.kaa" --to "$url" >"$work/publish.out" 2>&1 ||
    { cat "$work/publish.out" >&2; fail "$what: kaa publish failed"; }
  pass "$what: kaa publish $sample.kaa with the admin token"
  answer=$(curl -sf -X POST -H 'Content-Type: application/json' --data "$sample_body" "$url/v2/models/$sample/infer") ||
    fail "$what: POST /v2/models/$sample/infer failed"
  echo "  $answer" | cut -c1-200
  check "$what: POST /v2/models/$sample/infer answers species setosa" \
    grep -q '"name":"species".*"data":\["setosa"\]' <<<"$answer"
}

echo
echo "== the .deb: $deb"
check "the .deb's version is kaa --version ($version)" test "$(dpkg-deb -f "$deb" Version)" = "$version"
check "/etc/kaa/node.yaml is the .deb's conffile" test "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)" = /etc/kaa/node.yaml
contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in ./usr/bin/kaa ./etc/kaa/node.yaml ./lib/systemd/system/kaa-node.service ./usr/share/doc/kaa/copyright \
         ./usr/share/doc/kaa/changelog.gz ./usr/share/man/man1/kaa.1.gz ./usr/share/doc/kaa/operations.md.gz; do
  grep -qx "$f" <<<"$contents" || fail "the .deb lacks $f"
done
pass "the .deb holds the binary, config, unit, copyright, changelog, man page and guide"

lintian_status=0
lintian --allow-root --tag-display-limit 0 --fail-on error "$deb" >"$work/lintian.out" 2>&1 || lintian_status=$?
errors=$(grep -c '^E: ' "$work/lintian.out" || true)
warnings=$(grep -c '^W: ' "$work/lintian.out" || true)
sed 's/^/  lintian: /' "$work/lintian.out"
[ "$lintian_status" -eq 0 ] || [ "$errors" -gt 0 ] || fail "lintian did not run (status $lintian_status)"
check "lintian: $errors errors, $warnings warnings" test "$errors" -eq 0 -a "$lintian_status" -eq 0

dpkg -i "$deb" >"$work/dpkg.out" 2>&1 || {
  installed=true
  apt-get -o DPkg::Lock::Timeout=600 install -f -y -qq >>"$work/dpkg.out" 2>&1 || { cat "$work/dpkg.out" >&2; fail "dpkg -i $deb"; }
}
installed=true
check "dpkg -i installs kaa $version" test "$(dpkg-query -W -f='${Status} ${Version}' kaa)" = "install ok installed $version"
check "the installed /usr/bin/kaa --version is the package's version" test "$(/usr/bin/kaa --version)" = "$version"

check "systemd-analyze verify kaa-node.service" systemd-analyze verify /lib/systemd/system/kaa-node.service
unit=/lib/systemd/system/kaa-node.service
for line in User=kaa Restart=on-failure NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
            ReadWritePaths=/var/lib/kaa LimitNOFILE=1048576 "ExecStart=/usr/bin/kaa node --config /etc/kaa/node.yaml"; do
  grep -qx "$line" "$unit" || fail "the unit lacks $line"
done
pass "the unit runs /usr/bin/kaa node --config /etc/kaa/node.yaml as kaa, hardened"

owner_mode() { stat -c '%U:%G %a' "$1"; }
user_line=$(getent passwd kaa)
IFS=: read -r _ _ kaa_uid _ _ kaa_home kaa_shell <<<"$user_line"
check "the kaa user is a system user (uid $kaa_uid), home /var/lib/kaa, no login shell" \
  test "$kaa_uid" -lt 1000 -a "$kaa_home" = /var/lib/kaa -a "$kaa_shell" = /usr/sbin/nologin
check "/var/lib/kaa is kaa:kaa 750" test "$(owner_mode /var/lib/kaa)" = "kaa:kaa 750"
check "/etc/kaa/cluster.key is root:kaa 640" test "$(owner_mode /etc/kaa/cluster.key)" = "root:kaa 640"
check "/etc/kaa/tokens is root:kaa 640" test "$(owner_mode /etc/kaa/tokens)" = "root:kaa 640"
check "/etc/kaa/admin.token is root:root 600" test "$(owner_mode /etc/kaa/admin.token)" = "root:root 600"
check "/etc/kaa/node.yaml is root:root 644" test "$(owner_mode /etc/kaa/node.yaml)" = "root:root 644"
check "dpkg lists /etc/kaa/node.yaml as a conffile" grep -q '^ /etc/kaa/node.yaml [0-9a-f]\{32\}$' \
  <<<"$(dpkg-query -W -f='${Conffiles}\n' kaa)"
check "the installed node.yaml is cluster/node-production.yaml" cmp -s /etc/kaa/node.yaml cluster/node-production.yaml

key_sum=$(sha256sum /etc/kaa/cluster.key)
token_sum=$(sha256sum /etc/kaa/admin.token /etc/kaa/tokens)
dpkg -i "$deb" >"$work/dpkg.out" 2>&1 || { cat "$work/dpkg.out" >&2; fail "dpkg -i over the installed package"; }
check "installing again keeps the cluster key" test "$(sha256sum /etc/kaa/cluster.key)" = "$key_sum"
check "installing again keeps the admin token and tokens file" test "$(sha256sum /etc/kaa/admin.token /etc/kaa/tokens)" = "$token_sum"

# The node as the unit starts it: its ExecStart line, as user kaa in /var/lib/kaa, no new
# privileges, a clean environment; flags move its addresses to free loopback ports.
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
http=$(free_port); peer=$(free_port)
url=http://127.0.0.1:$http
build_sample /usr/bin/kaa "$work/$sample.kaa"
start_deb_node() {
  local log=$1
  # shellcheck disable=SC2086 # ExecStart is split into words as systemd splits it (no quoting in it)
  ( cd /var/lib/kaa && umask 0027 &&
    exec setpriv --reuid=kaa --regid=kaa --init-groups --no-new-privs --reset-env -- \
      $exec_start --http-addr "127.0.0.1:$http" --peer-addr "127.0.0.1:$peer" ) >"$log" 2>&1 &
  node_pid=$!
  wait_ready "$url" "$log"
}
log=$work/deb-node.log
start_deb_node "$log"
check "the installed node runs as user kaa" test "$(ps -o user= -p "$node_pid")" = kaa
pass "the installed node is ready on $url with /etc/kaa/node.yaml"
publish_and_score /usr/bin/kaa "$url" /etc/kaa/admin.token "installed node"
check "the snapshot is stored in /var/lib/kaa, owned by kaa" test "$(stat -c %U "/var/lib/kaa/snapshots/$sample/1.kaa")" = kaa

# docs/operations.md, "Backing up and restoring a node's store": its commands, as written there,
# on the running node; then the data directory emptied, the backup put back, and the node
# started again serves the sample without a new publish.
b=$work/backup/kaa-$(date +%F); mkdir -p "$b"
runuser -u kaa -- sqlite3 /var/lib/kaa/catalog.sqlite ".backup '/tmp/catalog.sqlite'"
runuser -u kaa -- sqlite3 /var/lib/kaa/deadletters.sqlite ".backup '/tmp/deadletters.sqlite'"
mv /tmp/catalog.sqlite /tmp/deadletters.sqlite "$b/"
rsync -a --exclude .tmp /var/lib/kaa/snapshots /var/lib/kaa/node-id /var/lib/kaa/incarnation "$b/"
check "the backup holds both databases, the archive and the node id" \
  test -s "$b/catalog.sqlite" -a -s "$b/deadletters.sqlite" -a -f "$b/snapshots/$sample/1.kaa" -a -s "$b/node-id"
node_id=$(cat /var/lib/kaa/node-id)
stop_node "the installed node" "$log"
find /var/lib/kaa -mindepth 1 -delete
cp -a "$b/." /var/lib/kaa/
chown -R kaa:kaa /var/lib/kaa
start_deb_node "$work/deb-node-restored.log"
check "the restored node keeps its id" test "$(cat /var/lib/kaa/node-id)" = "$node_id"
answer=$(curl -sf -X POST -H 'Content-Type: application/json' --data "$sample_body" "$url/v2/models/$sample/infer") ||
  fail "restored node: POST /v2/models/$sample/infer failed"
check "the node restored from the backup answers $sample without a new publish" \
  grep -q '"name":"species".*"data":\["setosa"\]' <<<"$answer"
stop_node "the restored node" "$work/deb-node-restored.log"

dpkg -r kaa >"$work/dpkg.out" 2>&1 || { cat "$work/dpkg.out" >&2; fail "dpkg -r kaa"; }
check "dpkg -r removes /usr/bin/kaa and the unit" test ! -e /usr/bin/kaa -a ! -e "$unit"
check "dpkg -r keeps the data: /var/lib/kaa/snapshots/$sample/1.kaa" test -f "/var/lib/kaa/snapshots/$sample/1.kaa"
check "dpkg -r keeps /etc/kaa/node.yaml, the cluster key and the tokens" \
  test -f /etc/kaa/node.yaml -a "$(sha256sum /etc/kaa/cluster.key)" = "$key_sum" -a -f /etc/kaa/tokens
check "dpkg -r leaves kaa in state config-files" test "$(dpkg-query -W -f='${Status}' kaa)" = "deinstall ok config-files"

dpkg -P kaa >"$work/dpkg.out" 2>&1 || { cat "$work/dpkg.out" >&2; fail "dpkg -P kaa"; }
check "dpkg -P removes /var/lib/kaa" test ! -e /var/lib/kaa
check "dpkg -P removes /etc/kaa with the cluster key and tokens" test ! -e /etc/kaa
check "dpkg -P removes /usr/share/doc/kaa and the man page" test ! -e /usr/share/doc/kaa -a ! -e /usr/share/man/man1/kaa.1.gz
check "dpkg -P leaves no trace in dpkg's database" test -z "$(dpkg-query -W -f='${Status}' kaa 2>/dev/null | grep -v not-installed || true)"
check "the kaa system user stays after purge (Debian practice), owning no file under /etc, /var, /usr" \
  test -n "$(getent passwd kaa)" -a -z "$(find /etc /var /usr -xdev -user kaa -print -quit 2>/dev/null)"

echo
echo "== the tarball: $tarball"
t=$work/unpacked
mkdir -m 0755 "$t"
tar -xzf "$tarball" -C "$t"
dir=$t/kaa-$version-linux-x86_64
for f in bin/kaa etc/node.yaml systemd/kaa-node.service man/kaa.1 doc/operations.md INSTALL licenses/COPYRIGHT \
         licenses/swift-runtime/LICENSE.txt; do
  [ -f "$dir/$f" ] || fail "the tarball lacks $f"
done
pass "the tarball holds bin/kaa, etc/node.yaml, the unit, the man page, the guide, INSTALL and the licences"
ldd "$dir/bin/kaa" | sed 's/^/  ldd: /'
check "ldd bin/kaa lists no Swift library" bash -c "! ldd '$dir/bin/kaa' | grep -qE 'libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime|not found'"

# The node from the unpacked tarball, as INSTALL's "Try it without installing" runs it, with the
# Swift toolchain hidden under an empty directory where mount namespaces are available.
toolchain=$(dirname "$(dirname "$(dirname "$(readlink -f "$(command -v swift 2>/dev/null || echo /nonexistent/usr/bin/swift)")")")")
hide=()
if [ -d "$toolchain/usr/lib/swift" ] && unshare -m true 2>/dev/null; then
  hide=(unshare -m sh -c "mount -t tmpfs -o ro,size=4k kaa-no-swift '$toolchain' && exec \"\$@\"" --)
  check "with $toolchain hidden, bin/kaa --version is $version" test "$("${hide[@]}" "$dir/bin/kaa" --version)" = "$version"
else
  echo "NOTE: the Swift toolchain cannot be hidden here (no toolchain found, or no mount namespaces); ldd alone shows bin/kaa needs none"
fi
build_sample "$dir/bin/kaa" "$work/$sample.kaa"
http=$(free_port); peer=$(free_port)
url=http://127.0.0.1:$http
log=$work/tar-node.log
(
  cd "$dir"
  mkdir trial
  bin/kaa keys cluster --out trial/cluster.key >/dev/null
  bin/kaa tokens create --scope admin --out trial/admin.token --append-to trial/tokens >/dev/null
)
( cd "$dir" && exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "${hide[@]}" bin/kaa node --config etc/node.yaml --data-dir trial/data --http-addr "127.0.0.1:$http" \
    --peer-addr "127.0.0.1:$peer" --cluster-key-file trial/cluster.key --tokens-file trial/tokens ) >"$log" 2>&1 &
node_pid=$!
wait_ready "$url" "$log"
pass "the tarball's node is ready on $url with etc/node.yaml"
publish_and_score "$dir/bin/kaa" "$url" "$dir/trial/admin.token" "tarball node"
stop_node "the tarball's node" "$log"

echo
echo "test-package: PASS ($checks checks, $((SECONDS - start)) s)"
