//! Every example of ftrack's caching documentation, in Rust, against the
//! in-crate fixture server, printing the server's call count after each
//! step.
//!
//! Run it with `cargo run --example ftrack_session`.

use std::sync::Arc;

use layercache::ftrack::{FixtureServer, Session};
use layercache::{Cache, FileCache, Layered, MemoryCache, Serialised};
use serde_json::json;

fn fixture() -> layercache::Result<Arc<FixtureServer>> {
    let server = FixtureServer::new();
    server.insert_all([
        json!({"__entity_type__": "User", "id": "some-user-id", "username": "ada",
               "timelogs": [{"__entity_type__": "Timelog", "id": "timelog-1"}]}),
        json!({"__entity_type__": "Timelog", "id": "timelog-1", "comment": "Some comment",
               "user": {"__entity_type__": "User", "id": "some-user-id"}}),
        json!({"__entity_type__": "Shot", "id": "shot-1", "name": "sh010"}),
        json!({"__entity_type__": "Asset", "id": "asset-1", "name": "hero",
               "parent": {"__entity_type__": "Shot", "id": "shot-1"}}),
    ])?;
    for n in 1..=3 {
        server.insert(
            json!({"__entity_type__": "AssetVersion", "id": format!("version-{n}"),
                             "version": n, "asset": {"__entity_type__": "Asset", "id": "asset-1"}}),
        )?;
    }
    Ok(Arc::new(server))
}

fn main() -> layercache::Result<()> {
    let server = fixture()?;
    let calls = |step: &str| println!("   [{step}] server calls so far: {}", server.calls());

    println!("1. A session with the default cache (memory only).");
    let session = Session::builder(server.clone()).build();
    println!("   first get of a user performs a request to the server:");
    let user = session
        .get("User", ["some-user-id"])?
        .expect("the fixture has it");
    calls("after the first get");
    println!("   a later get of the same user is served from the cache:");
    let again = session.get("User", ["some-user-id"])?.expect("cached");
    calls("after the second get");
    println!("   same instance: {}", user.same(&again));

    println!("2. Related data merges together however it was retrieved.");
    let timelogs = user.get("timelogs")?;
    let timelog = timelogs.as_collection().expect("a collection")[0].clone();
    {
        let _off = session.auto_populating(false);
        println!(
            "   timelog['comment'] with auto-populate off: {:?}",
            timelog.get("comment")?
        );
    }
    session.query(&format!(
        "select comment from Timelog where id is \"{}\"",
        timelog.key().primary_key[0]
    ))?;
    {
        let _off = session.auto_populating(false);
        println!(
            "   after the query, same instance: {:?}",
            timelog.get("comment")?
        );
    }
    calls("after the comment query");

    println!("3. A session whose cache maker layers memory over a file (session.codec()).");
    let cache_path = std::env::temp_dir().join("ftrack_session_cache.lc");
    let _ = std::fs::remove_file(&cache_path);
    let cache_maker = {
        let cache_path = cache_path.clone();
        move |session: &Session| -> Option<Box<dyn Cache<String, layercache::ftrack::Entity>>> {
            let file = FileCache::open(&cache_path).ok()?;
            Some(Box::new(
                Layered::new()
                    .with_layer(MemoryCache::new())
                    .with_layer(Serialised::new(file, session.codec())),
            ))
        }
    };
    let first = Session::builder(server.clone())
        .cache(cache_maker.clone())
        .build();
    let versions = first
        .query("select asset.parent from AssetVersion where asset.name is \"hero\" limit 10")?;
    println!(
        "   queried {} versions; the file holds them and what they reference",
        versions.len()
    );
    calls("after the query in the first persistent session");
    drop(versions);
    drop(first);

    println!("4. A second session on the same file: served from it, references expanded.");
    server.reset_counts();
    let second = Session::builder(server.clone()).cache(cache_maker).build();
    let mut parent = None;
    for n in 1..=3 {
        let version = second
            .get("AssetVersion", [format!("version-{n}")])?
            .expect("in the file");
        let asset = version.get("asset")?;
        let shot = asset.as_entity().expect("a reference").get("parent")?;
        let shot = shot.as_entity().expect("a reference").clone();
        println!("   version-{n}: asset.parent = {}", shot.key());
        parent = Some(shot);
    }
    calls("in the second session, references expanded from the file");
    if let Some(shot) = parent {
        println!(
            "   the shot's name was never loaded, so reading it asks the server: {:?}",
            shot.get("name")?
        );
        calls("after reading a value no session had loaded");
    }

    println!("5. print session.cache:");
    println!("   {:?}", second.cache());
    let _ = std::fs::remove_file(&cache_path);
    Ok(())
}
