//! A font for Hangul (and the rest of CJK) from the system, when one is
//! installed: egui's own fonts have none. Without one, Korean text shows
//! as boxes but everything else works.

use std::sync::Arc;

/// Where Debian and other distributions put a CJK font, best first, with
/// the face to use in a collection (Noto Sans CJK's Korean face is 1).
const CANDIDATES: [(&str, u32); 6] = [
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 1),
    ("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc", 1),
    (
        "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
        1,
    ),
    ("/usr/share/fonts/truetype/nanum/NanumGothic.ttf", 0),
    ("/usr/share/fonts/truetype/unfonts-core/UnDotum.ttf", 0),
    ("/usr/share/fonts/truetype/baekmuk/gulim.ttf", 0),
];

/// Read the first CJK font found (`KEYLINE_CJK_FONT` names another).
pub fn find() -> Option<(Vec<u8>, u32)> {
    if let Some(p) = std::env::var_os("KEYLINE_CJK_FONT") {
        if let Ok(b) = std::fs::read(p) {
            return Some((b, 0));
        }
    }
    CANDIDATES
        .iter()
        .find_map(|(p, i)| std::fs::read(p).ok().map(|b| (b, *i)))
}

/// Add the system's CJK font as a fallback after egui's own fonts.
pub fn install(ctx: &egui::Context) {
    let Some((bytes, index)) = find() else {
        return;
    };
    let mut defs = egui::FontDefinitions::default();
    let mut data = egui::FontData::from_owned(bytes);
    data.index = index;
    defs.font_data.insert("cjk".into(), Arc::new(data));
    for fam in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        defs.families.entry(fam).or_default().push("cjk".into());
    }
    ctx.set_fonts(defs);
}
