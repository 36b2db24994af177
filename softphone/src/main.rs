//! `keyline-phone`: the softphone window of the workstation's agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keyline_phone::{tel_number, Lang, PhoneApp};

/// The Keyline phone window. It drives the workstation's keyline-agent,
/// which keeps ringing and answering calls when the window is closed.
#[derive(Parser, Debug)]
#[command(name = "keyline-phone", version)]
struct Args {
    /// The agent's state directory (default: the user's agent, as
    /// `keyline-agent --state`).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// The window's language: en or ko (default: the one last chosen in
    /// Settings, else the system locale).
    #[arg(long, value_name = "LANG")]
    lang: Option<String>,
    /// Start without showing the window: it comes to the front when a call
    /// rings or when keyline-phone is started again (the session's unit).
    #[arg(long)]
    hidden: bool,
    /// A `tel:` link or a number to put in the number field.
    number: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let state = match args.state {
        Some(s) => s,
        None => match keyline_net::statedir::default_dir("agent") {
            Ok(d) => d,
            Err(e) => {
                eprintln!("keyline-phone: {e:#}");
                return ExitCode::FAILURE;
            }
        },
    };
    let prefs = keyline_phone::prefs::path();
    let hidden = args.hidden;
    let lang = match args.lang.as_deref() {
        None => prefs
            .as_deref()
            .and_then(keyline_phone::prefs::lang)
            .unwrap_or_else(Lang::from_env),
        Some(l) => Lang::from_locale(l),
    };
    let number = args
        .number
        .as_deref()
        .map(|n| tel_number(n).unwrap_or_else(|| n.to_string()));
    let single = keyline_phone::single::socket_for(&state);
    if keyline_phone::single::hand_over(&single, number.as_deref().unwrap_or("")) {
        // The window for this agent is open: it has the number now.
        return ExitCode::SUCCESS;
    }
    let sock = keyline_net::control::socket_path(&state);
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Keyline")
            .with_app_id("keyline-phone")
            .with_inner_size([440.0, 640.0])
            .with_min_inner_size([360.0, 480.0])
            .with_visible(!args.hidden),
        ..Default::default()
    };
    let result = eframe::run_native(
        "Keyline",
        options,
        Box::new(move |cc| {
            let mut app = PhoneApp::connect(&cc.egui_ctx, sock, lang);
            let ctx = cc.egui_ctx.clone();
            app.notify_with(keyline_phone::notify::Notifier::start(std::sync::Arc::new(
                move || ctx.request_repaint(),
            )));
            if let Some(p) = prefs {
                app.keep_prefs_in(p);
            }
            if hidden {
                app.start_hidden();
            }
            let ctx = cc.egui_ctx.clone();
            match keyline_phone::single::listen(
                &single,
                std::sync::Arc::new(move || ctx.request_repaint()),
            ) {
                Ok(rx) => app.take_handovers(rx),
                Err(e) => eprintln!("keyline-phone: other windows cannot hand over numbers: {e}"),
            }
            if let Some(n) = number {
                app.model.number = n;
            }
            Ok(Box::new(app))
        }),
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyline-phone: {e}");
            ExitCode::FAILURE
        }
    }
}
