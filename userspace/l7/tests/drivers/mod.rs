//! Shared by the proxy's test files: every scenario runs on both I/O
//! drivers, and the hyper backends run on one tokio runtime.

use std::sync::OnceLock;

/// The tokio runtime the test backends (hyper servers) run on: two
/// threads, shared by every test of a file.
pub fn tokio_rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Runs each named scenario (a `fn(DriverChoice)` in the including file)
/// on io_uring and on the polling driver, as modules `NAME::io_uring` and
/// `NAME::polling`. io_uring is skipped, with a message, where it is
/// unavailable, unless `FULCRUM_REQUIRE_IO_URING=1`.
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn io_uring() {
                if let Err(e) = fulcrum_l7::probe_io_uring() {
                    if std::env::var("FULCRUM_REQUIRE_IO_URING").is_ok_and(|v| v == "1") {
                        panic!("io_uring unavailable: {e}");
                    }
                    eprintln!("SKIPPED: io_uring unavailable here ({e})");
                    return;
                }
                super::$name(fulcrum_l7::DriverChoice::IoUring);
            }
            #[test]
            fn polling() {
                super::$name(fulcrum_l7::DriverChoice::Polling);
            }
        }
    )*};
}
