# Shared by the cluster benches (sourced): builds the server and the load harness (unless
# NO_BUILD is set: the binaries already built), sets HARNESS, and defines `login URL`,
# which prints a token of the harness's admin.
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --bin stockline
  cargo bench --bench load --no-run 2> /dev/null
fi
HARNESS=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -n 1)

login() {
  curl -sf "$1/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"login":"load@stockline.test","password":"load-password"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}
