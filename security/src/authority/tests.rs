use super::*;
use crate::state::Secret;
use std::net::Ipv4Addr;
use std::path::Path;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

fn authority(dir: &Path) -> Authority {
    Authority::open(
        AuthMode::Required,
        Some(dir.join(SECURITY_FILE)),
        Some("the cluster secret"),
    )
    .unwrap()
}

#[test]
fn passwords_are_stored_as_argon2id_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let authority = authority(dir.path());
    authority
        .apply(SecurityCommand::UserAdd {
            name: "alice".into(),
            password: Secret("correct horse".into()),
        })
        .unwrap();
    let file = std::fs::read_to_string(dir.path().join(SECURITY_FILE)).unwrap();
    assert!(file.contains("$argon2id$"), "{file}");
    assert!(!file.contains("correct horse"));
    let ok = authority.login_password("alice", "correct horse", PEER, true);
    assert_eq!(ok.unwrap().name, "alice");
    assert_eq!(
        authority.login_password("alice", "wrong", PEER, true),
        Err(LoginError::BadCredentials)
    );
    assert_eq!(
        authority.login_password("bob", "correct horse", PEER, true),
        Err(LoginError::BadCredentials)
    );
    assert_eq!(
        authority.login_password("alice", "correct horse", PEER, false),
        Err(LoginError::NeedsTls)
    );
    // Reopened from the file, the same.
    let reopened = super::tests::authority(dir.path());
    assert!(reopened
        .login_password("alice", "correct horse", PEER, true)
        .is_ok());
}

#[test]
fn failures_on_one_port_do_not_lock_another_out() {
    let authority = Authority::open(AuthMode::Required, None, None).unwrap();
    for _ in 0..FAILURES_ALLOWED {
        let failed = authority.login_token(Port::Console, "keel_bad", PEER, true);
        assert!(matches!(failed, Err(LoginError::BadCredentials)));
    }
    assert!(matches!(
        authority.login_token(Port::Console, "keel_bad", PEER, true),
        Err(LoginError::RateLimited { .. })
    ));
    // The client port's logins from the same address are still checked.
    assert!(matches!(
        authority.login_token(Port::Client, "keel_bad", PEER, true),
        Err(LoginError::BadCredentials)
    ));
    assert!(matches!(
        authority.login_token(Port::Ha, "keel_bad", PEER, true),
        Err(LoginError::BadCredentials)
    ));
}

#[test]
fn failed_logins_are_rate_limited_per_address() {
    let authority = Authority::open(AuthMode::Required, None, None).unwrap();
    for _ in 0..FAILURES_ALLOWED {
        assert_eq!(
            authority.login_token(Port::Client, "keel_nothing", PEER, true),
            Err(LoginError::BadCredentials)
        );
    }
    assert!(matches!(
        authority.login_token(Port::Client, "keel_nothing", PEER, true),
        Err(LoginError::RateLimited { .. })
    ));
    let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(
        authority.login_token(Port::Client, "keel_nothing", other, true),
        Err(LoginError::BadCredentials)
    );
}

#[test]
fn tokens_are_stored_hashed_and_revocation_ends_them() {
    let dir = tempfile::tempdir().unwrap();
    let authority = authority(dir.path());
    let reply = authority
        .apply(SecurityCommand::TokenCreate {
            name: "orders-app".into(),
        })
        .unwrap();
    let token = reply.token.unwrap().0;
    let file = std::fs::read_to_string(dir.path().join(SECURITY_FILE)).unwrap();
    assert!(!file.contains(&token[25..]), "the secret is not stored");
    let principal = authority
        .login_token(Port::Client, &token, PEER, true)
        .unwrap();
    assert_eq!(principal.name, "orders-app");
    assert!(authority.still_valid(&principal));
    let mut forged = token.clone();
    forged.pop();
    forged.push('x');
    assert!(authority
        .login_token(Port::Client, &forged, PEER, true)
        .is_err());
    authority
        .apply(SecurityCommand::TokenRevoke {
            id: reply.token_id.unwrap(),
        })
        .unwrap();
    assert!(!authority.still_valid(&principal));
    assert!(authority
        .login_token(Port::Client, &token, PEER, true)
        .is_err());
    let cluster = authority
        .login_token(Port::Client, "the cluster secret", PEER, true)
        .unwrap();
    assert!(authority.permits(&cluster, ResourceType::Cluster, "*", Action::Replicate));
    assert!(!authority.permits(&cluster, ResourceType::Topic, "t", Action::Publish));
}

#[test]
fn a_slave_installs_the_masters_state_and_refuses_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let master = Authority::open(AuthMode::Required, None, None).unwrap();
    master.grant_everything("ops").unwrap();
    let (version, bytes) = master.snapshot();
    assert_eq!(version, 4);
    let slave = authority(dir.path());
    assert!(slave.install(&bytes).unwrap());
    assert!(!slave.install(&bytes).unwrap());
    assert_eq!(slave.version(), 4);
    let ops = Principal {
        name: "ops".into(),
        credential: Credential::Password {
            user: "ops".into(),
            stamp: String::new(),
        },
    };
    assert!(slave.permits(&ops, ResourceType::Admin, "*", Action::Security));
    let damaged = String::from_utf8(bytes)
        .unwrap()
        .replace("\"*\"", "\"a*b\"");
    assert!(slave.install(damaged.as_bytes()).is_err());
    assert_eq!(authority(dir.path()).version(), 4, "persisted");
}

/// `security.json` through every crash point of a change: after the restart the state
/// is the old one or the new one, whole, never an error (a broker must start with the
/// rules it had, or the change it acknowledged).
#[test]
fn a_crash_at_any_point_of_a_change_leaves_the_old_state_or_the_new_one() {
    use keel_disk::sim::{SimDisk, TailShape};
    use keel_disk::Disk;
    let path = std::path::PathBuf::from("/data/security.json");
    let open = |disk: &SimDisk| {
        Authority::open_on(
            Arc::new(disk.clone()),
            AuthMode::Required,
            Some(path.clone()),
            None,
        )
    };
    let add = |name: &str| SecurityCommand::UserAdd {
        name: name.into(),
        password: Secret("a long password".into()),
    };
    for step in 1u64.. {
        let disk = SimDisk::new();
        disk.create_dir_all(std::path::Path::new("/data")).unwrap();
        disk.sync_dir(std::path::Path::new("/")).unwrap();
        let before = open(&disk).unwrap();
        before.apply(add("alice")).unwrap();
        let start = disk.operations();
        for shape in [TailShape::Clean, TailShape::Torn, TailShape::Garbage] {
            let disk = disk.after_crash(TailShape::Clean, 0);
            let authority = open(&disk).unwrap();
            let from = disk.operations();
            disk.crash_at(from + step, shape, step);
            let changed = authority.apply(add("bob"));
            let restarted = open(&disk.after_crash(shape, step)).unwrap_or_else(|error| {
                panic!("step {step} {shape:?}: the state does not open: {error}")
            });
            let users = restarted.apply(SecurityCommand::UserList).unwrap().users;
            assert!(
                users.contains(&"alice".to_string()),
                "step {step}: {users:?}"
            );
            if changed.is_ok() {
                // Acknowledged: it survives.
                assert!(users.contains(&"bob".to_string()), "step {step}: {users:?}");
            }
            if !disk.crashed() {
                // Past the change's last operation: every crash point before it was tried.
                assert!(step > 3 && start > 0, "the change took {step} operations");
                return;
            }
        }
    }
}
