//! Builds the small C face on libvpx (`csrc/vp8_shim.c`), found through
//! pkg-config like libopus.

fn main() {
    println!("cargo:rerun-if-changed=csrc/vp8_shim.c");
    let vpx = match pkg_config::Config::new()
        .atleast_version("1.8")
        .cargo_metadata(false)
        .probe("vpx")
    {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!("libvpx not found through pkg-config ({e}); install libvpx-dev (scripts/install-deps.sh)");
            std::process::exit(1);
        }
    };
    let mut build = cc::Build::new();
    build
        .file("csrc/vp8_shim.c")
        .warnings(true)
        .flag_if_supported("-std=c99");
    for dir in &vpx.include_paths {
        build.include(dir);
    }
    build.compile("keyline_vp8_shim");
    // The shim's archive comes before libvpx on the link line.
    for dir in &vpx.link_paths {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    for lib in &vpx.libs {
        println!("cargo:rustc-link-lib={lib}");
    }
}
