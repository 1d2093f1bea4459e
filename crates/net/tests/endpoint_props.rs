//! `Endpoint`'s parser and display, by property: every address form reads back from its
//! display, and no input makes the parser panic.

use std::net::SocketAddr;

use duo_net::Endpoint;
use proptest::prelude::*;

proptest! {
    #[test]
    fn any_string_parses_or_is_refused_without_panic(s in ".{0,200}") {
        let _ = s.parse::<Endpoint>();
        let _ = format!("unix:{s}").parse::<Endpoint>();
        let _ = format!("unix:@{s}").parse::<Endpoint>();
    }

    #[test]
    fn inet_addresses_read_back(ip in any::<std::net::IpAddr>(), port in any::<u16>()) {
        // (Not `any::<SocketAddr>()`: an IPv6 flow label does not show in the text form.)
        let addr = SocketAddr::new(ip, port);
        let e = Endpoint::from(addr);
        prop_assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e.clone());
        prop_assert_eq!(e.as_inet(), Some(addr));
        prop_assert!(!e.is_unix());
    }

    #[test]
    fn unix_paths_read_back(path in "/[a-zA-Z0-9_./ -]{1,100}") {
        // (A path that ends in `/` is refused: `trailing_slashes_are_refused`.)
        prop_assume!(!path.ends_with('/'));
        let e: Endpoint = format!("unix:{path}").parse().unwrap();
        prop_assert_eq!(e.as_path().map(|p| p.to_str().unwrap().to_owned()), Some(path.clone()));
        // A space that ends the path shows as `\x20` (it would end a `listening on` line).
        let shown = match path.strip_suffix(' ') {
            Some(head) => format!("unix:{head}\\x20"),
            None => format!("unix:{path}"),
        };
        prop_assert_eq!(e.to_string(), shown);
        prop_assert!(e.is_unix());
    }

    // (No backslash: `\xNN` in the text is the byte NN; `odd_bytes_read_back` covers it.)
    #[test]
    fn printable_abstract_names_read_back(name in "[ -\\[\\]-~]{1,107}") {
        // (Exactly `unix:@(empty)` is the empty name, as it displays; the name `(empty)`
        // displays as `unix:@\x28empty)`: review_round10_endpoint.rs.)
        prop_assume!(name != "(empty)");
        let e: Endpoint = format!("unix:@{name}").parse().unwrap();
        prop_assert_eq!(&e, &Endpoint::abstract_name(&name).unwrap());
        prop_assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e.clone());
    }

    #[test]
    fn odd_bytes_read_back(name in proptest::collection::vec(any::<u8>(), 1..=107)) {
        // Any bytes, as a script reads them back from a `listening on` line.
        let e = Endpoint::abstract_name(&name).unwrap();
        prop_assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e.clone());
        if !name.contains(&0) && name.last() != Some(&b'/') {
            let path = std::path::PathBuf::from(
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(name),
            );
            let e = Endpoint::unix(path).unwrap();
            prop_assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e.clone());
        }
    }

    #[test]
    fn trailing_slashes_are_refused(path in "[a-zA-Z0-9_./ -]{0,100}/") {
        // A directory's name: no socket is bound or reached there. An abstract name is
        // bytes, not a path: it may end in `/`.
        let (as_path, as_name) = (format!("unix:{path}"), format!("unix:@{path}"));
        prop_assert!(as_path.parse::<Endpoint>().is_err());
        prop_assert!(Endpoint::unix(&path).is_err());
        prop_assert!(as_name.parse::<Endpoint>().is_ok());
    }

    #[test]
    fn names_too_long_are_refused(len in 108usize..300) {
        // An abstract name holds 107 bytes, a path 108 (all of `sun_path`, no NUL).
        let long = "x".repeat(len);
        let (name, path) = (format!("unix:@{long}"), format!("unix:{long}x"));
        prop_assert!(name.parse::<Endpoint>().is_err());
        prop_assert!(path.parse::<Endpoint>().is_err());
    }
}
