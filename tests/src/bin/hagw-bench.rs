//! `hagw-bench`: on-demand benchmarks of `hagw run` (results in `docs/benchmarks.md`; not
//! run in CI). Needs root, iproute2, tcpdump and arping. What it measures and how: see
//! [`hagw_e2e::bench`].

fn main() -> anyhow::Result<()> {
    hagw_e2e::bench::main()
}
