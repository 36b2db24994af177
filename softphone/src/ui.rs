//! Drawing the model, and turning clicks and keys into [`Action`]s. Every
//! decision is the model's; this file only lays it out.

use std::path::PathBuf;
use std::time::Instant;

use egui::{Color32, Key, RichText, Vec2};

use crate::i18n::{Lang, Msg};
use crate::io::{AgentIo, Wake};
use crate::model::{Action, Agent, AudioWhat, CallView, Direction, Model, Screen, Tab};
use crate::video::{Picture, VideoFeed};

/// The largest rectangle of `size`'s shape centred in `area`.
fn fit(area: egui::Rect, size: Vec2) -> egui::Rect {
    let scale = (area.width() / size.x.max(1.0)).min(area.height() / size.y.max(1.0));
    egui::Rect::from_center_size(area.center(), size * scale)
}

const GREEN: Color32 = Color32::from_rgb(0x2e, 0x9e, 0x4f);
const RED: Color32 = Color32::from_rgb(0xc8, 0x3c, 0x3c);
const AMBER: Color32 = Color32::from_rgb(0xd8, 0x9a, 0x1c);

/// The window: the model, its link to the agent, and the clock.
pub struct PhoneApp {
    pub model: Model,
    io: Option<AgentIo>,
    start: Instant,
    /// A fixed model time, for pictures that must not change.
    frozen: Option<f64>,
    fonts: bool,
    title: String,
    focus_number: bool,
    /// Numbers handed over by later instances.
    handed: Option<std::sync::mpsc::Receiver<String>>,
    /// The agent's pictures of the call, and their textures (with the
    /// serial of the picture each holds).
    video: Option<VideoFeed>,
    peer_tex: Option<(u64, egui::TextureHandle)>,
    me_tex: Option<(u64, egui::TextureHandle)>,
    /// Where the language chosen in Settings is kept (none: not kept).
    prefs: Option<PathBuf>,
    /// The desktop's notifications, and whether one shows the ringing
    /// call now.
    notifier: Option<crate::notify::Notifier>,
    notified: bool,
    /// Frames until the window hides itself (`--hidden`; eframe shows
    /// every window once it has drawn its first frame); 0: not hiding.
    hide_in: u8,
}

/// What became of one of the call's pictures since the last frame.
enum Fresh {
    Same,
    Gone,
    New(u64, egui::ColorImage),
}

fn fresh(p: Option<&Picture>, have: Option<u64>) -> Fresh {
    match p {
        None => Fresh::Gone,
        Some(x) if Some(x.serial) == have => Fresh::Same,
        Some(x) => Fresh::New(
            x.serial,
            egui::ColorImage::from_rgba_unmultiplied([x.width, x.height], &x.rgba),
        ),
    }
}

fn apply(ctx: &egui::Context, slot: &mut Option<(u64, egui::TextureHandle)>, f: Fresh, name: &str) {
    match f {
        Fresh::Same => {}
        Fresh::Gone => *slot = None,
        Fresh::New(serial, img) => match slot {
            Some((s, t)) => {
                t.set(img, egui::TextureOptions::LINEAR);
                *s = serial;
            }
            None => {
                *slot = Some((
                    serial,
                    ctx.load_texture(name, img, egui::TextureOptions::LINEAR),
                ));
            }
        },
    }
}

impl std::fmt::Debug for PhoneApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneApp")
            .field("model", &self.model)
            .finish()
    }
}

impl PhoneApp {
    /// A window over `model`, talking to the agent through `io` (none:
    /// the model is fed by hand, as rendering tests do).
    pub fn new(model: Model, io: Option<AgentIo>) -> PhoneApp {
        PhoneApp {
            model,
            io,
            start: Instant::now(),
            frozen: None,
            fonts: false,
            title: String::new(),
            focus_number: false,
            handed: None,
            video: None,
            peer_tex: None,
            me_tex: None,
            prefs: None,
            notifier: None,
            notified: false,
            hide_in: 0,
        }
    }

    /// Hide the window as soon as it has drawn once, until a call rings or
    /// another `keyline-phone` brings it to the front.
    pub fn start_hidden(&mut self) {
        self.hide_in = 2;
    }

    /// Offer ringing calls on the desktop's notifications when the window
    /// cannot come to the front.
    pub fn notify_with(&mut self, n: crate::notify::Notifier) {
        self.notifier = Some(n);
    }

    /// Keep the language chosen in Settings in `file`.
    pub fn keep_prefs_in(&mut self, file: PathBuf) {
        self.prefs = Some(file);
    }

    /// Show the call's pictures from `feed`.
    pub fn watch_video(&mut self, feed: VideoFeed) {
        self.video = Some(feed);
    }

    /// Whether the other end's picture is showing (tests).
    pub fn shows_video(&self) -> bool {
        self.peer_tex.is_some()
    }

    /// The other end's latest picture as it came (tests).
    pub fn peer_picture(&self) -> Option<Picture> {
        self.video.as_ref()?.with(|p| p.peer.clone())
    }

    /// Upload the pictures that changed since the last frame.
    fn refresh_pictures(&mut self, ctx: &egui::Context) {
        let Some(feed) = &self.video else { return };
        let have = (
            self.peer_tex.as_ref().map(|t| t.0),
            self.me_tex.as_ref().map(|t| t.0),
        );
        let (peer, me) =
            feed.with(|p| (fresh(p.peer.as_ref(), have.0), fresh(p.me.as_ref(), have.1)));
        apply(ctx, &mut self.peer_tex, peer, "peer-video");
        apply(ctx, &mut self.me_tex, me, "self-video");
    }

    /// A window following the agent whose control socket is `sock`,
    /// waking `ctx` whenever the agent says something.
    pub fn connect(ctx: &egui::Context, sock: PathBuf, lang: Lang) -> PhoneApp {
        let c = ctx.clone();
        let wake: Wake = std::sync::Arc::new(move || c.request_repaint());
        let feed = VideoFeed::start(&sock, wake.clone());
        let mut app = PhoneApp::new(Model::new(lang), Some(AgentIo::start(sock, wake)));
        app.watch_video(feed);
        app
    }

    /// Take numbers handed over by later instances from `rx`.
    pub fn take_handovers(&mut self, rx: std::sync::mpsc::Receiver<String>) {
        self.handed = Some(rx);
    }

    /// Show model time `t` from now on (the call timer stands still).
    pub fn freeze_clock(&mut self, t: f64) {
        self.frozen = Some(t);
    }

    fn now(&self) -> f64 {
        self.frozen
            .unwrap_or_else(|| self.start.elapsed().as_secs_f64())
    }

    /// Take what the agent said; send what the model asks.
    pub fn pump(&mut self) {
        let now = self.now();
        if let Some(rx) = &self.handed {
            while let Ok(n) = rx.try_recv() {
                self.model.handed_over(n);
            }
        }
        if let Some(io) = &self.io {
            while let Some(i) = io.try_recv() {
                self.model.handle(now, i);
            }
            while let Some(r) = self.model.poll_request() {
                io.send(r);
            }
        }
    }

    fn t(&self, m: Msg) -> &'static str {
        m.text(self.model.lang)
    }

    /// Draw one frame (eframe's `App::ui`, or a test harness's).
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        if !self.fonts {
            crate::fonts::install(&ctx);
            self.fonts = true;
        }
        self.logic(&ctx);
        self.keys(&ctx);
        self.refresh_pictures(&ctx);

        egui::Panel::top("top").show(ui, |ui| self.top(ui));
        egui::Panel::bottom("notice").show(ui, |ui| self.notice(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                match (self.model.screen(), self.model.tab) {
                    (Screen::NoAgent, _) => self.no_agent(ui),
                    (Screen::Ringing, _) => self.ringing(ui),
                    (Screen::InCall, Tab::Phone) => self.in_call(ui),
                    (Screen::Pairing, Tab::Phone) => self.pairing(ui),
                    (Screen::Idle, Tab::Phone) => self.idle(ui),
                    (_, Tab::History) => self.history(ui),
                    (_, Tab::Contacts) => self.contacts(ui),
                    (_, Tab::Messages) => self.messages(ui),
                    (_, Tab::Voicemail) => self.voicemail(ui),
                    (_, Tab::Settings) => self.settings(ui),
                }
            });
        });
        // Requests made by this frame's clicks go out now.
        self.pump();
        if self.model.ticking() {
            ctx.request_repaint_after(std::time::Duration::from_secs(1));
        }
    }

    /// What runs even while the window is hidden or minimised: take the
    /// agent's news, send requests, come to the front when a call rings,
    /// keep the title current.
    pub fn logic(&mut self, ctx: &egui::Context) {
        self.pump();
        if self.hide_in > 0 {
            self.hide_in -= 1;
            if self.hide_in == 0 {
                if !self.model.raise_pending() {
                    ctx.send_viewport_cmd(egui::ViewportCommand::Visible(false));
                }
            } else {
                ctx.request_repaint();
            }
        }
        if self.model.take_lang_change() {
            if let Some(file) = &self.prefs {
                if let Err(e) = crate::prefs::save_lang(file, self.model.lang) {
                    eprintln!(
                        "keyline-phone: cannot keep the language in {}: {e}",
                        file.display()
                    );
                }
            }
        }
        self.notifications(ctx);
        if self.model.take_raise() {
            ctx.send_viewport_cmd(egui::ViewportCommand::Visible(true));
            ctx.send_viewport_cmd(egui::ViewportCommand::Minimized(false));
            ctx.send_viewport_cmd(egui::ViewportCommand::Focus);
            ctx.send_viewport_cmd(egui::ViewportCommand::RequestUserAttention(
                egui::UserAttentionType::Critical,
            ));
            // A window that was hidden drew nothing meanwhile: draw now.
            ctx.request_repaint();
        }
        let title = self.window_title();
        if title != self.title {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title = title;
        }
    }

    /// A ringing call asks the window to the front; where the window
    /// manager refuses it the focus (the window has not got it within the
    /// model's grace period) the call is also offered as a desktop
    /// notification with Answer and Decline, withdrawn when the window gets
    /// the focus or the ringing stops. What is chosen on it acts as the
    /// window's buttons do.
    fn notifications(&mut self, ctx: &egui::Context) {
        let now = self.now();
        let focused = ctx.input(|i| i.viewport().focused.unwrap_or(false));
        self.model.window_focus(now, focused);
        if let Some(at) = self.model.focus_deadline() {
            // Look again when the grace period ends, input or not.
            ctx.request_repaint_after(std::time::Duration::from_secs_f64(
                (at - now).max(0.0) + 0.01,
            ));
        }
        let Some(n) = &self.notifier else { return };
        let mut acts = Vec::new();
        while let Some(c) = n.try_choice() {
            acts.push(c);
        }
        let wanted = self.model.notification();
        if wanted && !self.notified {
            let who = self.model.call.as_ref().map(|c| {
                if c.peer_name.is_some() {
                    format!("{}  {}", c.who(), c.peer)
                } else {
                    c.peer.clone()
                }
            });
            n.ring(
                &format!("Keyline — {}", self.t(Msg::Incoming)),
                who.as_deref().unwrap_or(""),
            );
            self.notified = true;
        }
        if !wanted && self.notified {
            n.close();
            self.notified = false;
        }
        for c in acts {
            match c {
                crate::notify::Choice::Answer => self.model.act(Action::Answer),
                crate::notify::Choice::Decline => self.model.act(Action::Decline),
                crate::notify::Choice::Show => self.model.handed_over(String::new()),
            }
        }
        if let Some(io) = &self.io {
            while let Some(r) = self.model.poll_request() {
                io.send(r);
            }
        }
    }

    fn window_title(&self) -> String {
        let m = &self.model;
        let what = match m.screen() {
            Screen::NoAgent => self.t(Msg::NoAgentShort).to_string(),
            Screen::Pairing => self.t(Msg::PairingTitle).to_string(),
            Screen::Ringing => match &m.call {
                Some(c) => format!("{} {}", self.t(Msg::Incoming), c.who()),
                None => self.t(Msg::Incoming).to_string(),
            },
            Screen::InCall => m
                .call
                .as_ref()
                .map(|c| c.who().to_string())
                .unwrap_or_default(),
            Screen::Idle => m.link.ext.clone().unwrap_or_default(),
        };
        if what.is_empty() {
            "Keyline".into()
        } else {
            format!("Keyline — {what}")
        }
    }

    /// Keys that work anywhere: Esc, Enter, and typing a number with no
    /// field in focus.
    fn keys(&mut self, ctx: &egui::Context) {
        let screen = self.model.screen();
        let nothing_focused = ctx.memory(|m| m.focused().is_none());
        let (esc, enter, typed) = ctx.input(|i| {
            let typed: String = i
                .events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::Text(t) | egui::Event::Paste(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            (i.key_pressed(Key::Escape), i.key_pressed(Key::Enter), typed)
        });
        if esc {
            self.model.act(Action::Escape);
        }
        if enter && screen == Screen::Ringing {
            self.model.act(Action::Enter);
        }
        if nothing_focused
            && screen == Screen::Idle
            && self.model.tab == Tab::Phone
            && !typed.is_empty()
        {
            self.model
                .number
                .extend(typed.chars().filter(|c| !c.is_control()));
            self.focus_number = true;
            // The field takes the focus in this frame; draw once more so
            // that what was typed shows now, not at the next input.
            ctx.request_repaint();
        }
    }

    fn top(&mut self, ui: &mut egui::Ui) {
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            ui.heading(RichText::new("Keyline").strong());
            let m = &self.model;
            let (dot, state) = self.link_words();
            let (r, _) = ui.allocate_exact_size(Vec2::splat(12.0), egui::Sense::hover());
            ui.painter().circle_filled(r.center(), 5.0, dot);
            ui.label(state);
            if let Some(ext) = &m.link.ext {
                ui.label(RichText::new(ext).strong());
            }
            if let Some(n) = m.link.numbers.first() {
                ui.label(RichText::new(n).strong());
            }
        });
        ui.horizontal_wrapped(|ui| {
            let m = &self.model;
            let tabs = [
                (Tab::Phone, Msg::Phone, 0),
                (Tab::History, Msg::History, m.missed),
                (Tab::Contacts, Msg::Contacts, 0),
                (Tab::Messages, Msg::Messages, m.messages_waiting),
                (Tab::Voicemail, Msg::Voicemail, m.voicemail_waiting),
                (Tab::Settings, Msg::Settings, 0),
            ];
            let mut pick = None;
            for (tab, name, count) in tabs {
                let text = if count > 0 {
                    format!("{} ({count})", self.t(name))
                } else {
                    self.t(name).to_string()
                };
                if ui.selectable_label(m.tab == tab, text).clicked() {
                    pick = Some(tab);
                }
            }
            if let Some(t) = pick {
                self.model.act(Action::Tab(t));
            }
        });
        ui.add_space(2.0);
    }

    fn link_words(&self) -> (Color32, String) {
        let l = &self.model.link;
        if self.model.agent != Agent::Up {
            return (RED, self.t(Msg::NoAgentShort).to_string());
        }
        let (c, m) = match l.state.as_str() {
            "registered" => (GREEN, Msg::LinkRegistered),
            "pending" => (AMBER, Msg::LinkPending),
            "connecting" => (AMBER, Msg::LinkConnecting),
            "logging-in" => (AMBER, Msg::LinkLoggingIn),
            "searching" | "" => (AMBER, Msg::LinkSearching),
            _ => (RED, Msg::LinkDisconnected),
        };
        let mut s = self.t(m).to_string();
        if l.state != "registered" {
            if let Some(e) = &l.error {
                s = format!("{s} ({e})");
            }
        }
        (c, s)
    }

    fn notice(&mut self, ui: &mut egui::Ui) {
        ui.add_space(4.0);
        let mut parts = Vec::new();
        let m = &self.model;
        if m.messages_waiting > 0 {
            parts.push(format!(
                "{}: {}",
                self.t(Msg::MessagesWaiting),
                m.messages_waiting
            ));
        }
        if m.voicemail_waiting > 0 {
            parts.push(format!(
                "{}: {}",
                self.t(Msg::VoicemailWaiting),
                m.voicemail_waiting
            ));
        }
        if m.missed > 0 {
            parts.push(format!("{}: {}", self.t(Msg::MissedCalls), m.missed));
        }
        if !parts.is_empty() {
            ui.label(RichText::new(parts.join("  ·  ")).strong());
        }
        if let Some(n) = &m.notice {
            let mut text = self.t(n.msg).to_string();
            if let Some(d) = &n.detail {
                if n.msg != Msg::CallEnded {
                    text = format!("{text}: {d}");
                }
            }
            let color = if n.error {
                RED
            } else {
                ui.visuals().text_color()
            };
            ui.label(RichText::new(text).color(color));
        }
        ui.add_space(4.0);
    }

    fn no_agent(&mut self, ui: &mut egui::Ui) {
        ui.add_space(24.0);
        ui.vertical_centered(|ui| match &self.model.agent {
            Agent::Connecting => {
                ui.heading(self.t(Msg::ConnectingAgent));
            }
            Agent::Absent(why) => {
                ui.heading(RichText::new(self.t(Msg::NoAgentTitle)).color(RED));
                ui.add_space(12.0);
                ui.label(self.t(Msg::NoAgentBody));
                ui.add_space(8.0);
                ui.label(RichText::new(why).small().weak());
                ui.add_space(8.0);
                ui.label(RichText::new(self.t(Msg::Retrying)).weak());
            }
            Agent::Up => {}
        });
    }

    fn pairing(&mut self, ui: &mut egui::Ui) {
        ui.add_space(24.0);
        ui.vertical_centered(|ui| {
            ui.heading(self.t(Msg::PairingTitle));
            ui.add_space(12.0);
            ui.label(self.t(Msg::PairingBody));
            ui.add_space(16.0);
            let code = self.model.link.code.clone().unwrap_or_default();
            let spaced = spaced_code(&code);
            ui.label(RichText::new(spaced).monospace().size(44.0).strong());
            ui.add_space(16.0);
            ui.label(RichText::new(self.t(Msg::PairingWaiting)).weak());
        });
    }

    fn idle(&mut self, ui: &mut egui::Ui) {
        ui.add_space(8.0);
        let mut act = None;
        ui.vertical_centered(|ui| {
            let label = ui.label(RichText::new(self.t(Msg::Number)).strong());
            let edit = egui::TextEdit::singleline(&mut self.model.number)
                .font(egui::TextStyle::Heading)
                .align(egui::Align2::CENTER_CENTER)
                .desired_width(260.0);
            let r = ui.add(edit).labelled_by(label.id);
            if self.focus_number {
                r.request_focus();
                self.focus_number = false;
            }
            if r.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)) {
                act = Some(Action::Enter);
            }
            ui.add_space(8.0);
            let call = egui::Button::new(
                RichText::new(self.t(Msg::Call))
                    .size(18.0)
                    .color(Color32::WHITE),
            )
            .fill(GREEN)
            .min_size(Vec2::new(200.0, 36.0));
            if ui.add(call).clicked() {
                act = Some(Action::Call);
            }
            ui.add_space(8.0);
            if let Some(k) = keypad(ui) {
                act = Some(Action::Keypad(k));
            }
        });
        ui.add_space(12.0);
        ui.separator();
        let mut dnd = self.model.dnd;
        if ui.checkbox(&mut dnd, self.t(Msg::Dnd)).clicked() {
            act = Some(Action::ToggleDnd);
        }
        ui.horizontal(|ui| {
            let mut fwd = self.model.forward_always.is_some();
            if ui.checkbox(&mut fwd, self.t(Msg::Forward)).clicked() {
                act = Some(Action::ToggleForward);
            }
            let label = ui.label(self.t(Msg::ForwardTo));
            let edit = egui::TextEdit::singleline(&mut self.model.forward_to).desired_width(100.0);
            ui.add_enabled(self.model.forward_always.is_none(), edit)
                .labelled_by(label.id);
        });
        if let Some(a) = act {
            self.model.act(a);
        }
    }

    fn ringing(&mut self, ui: &mut egui::Ui) {
        let Some(c) = self.model.call.clone() else {
            return;
        };
        let mut act = None;
        ui.add_space(16.0);
        ui.vertical_centered(|ui| {
            ui.heading(RichText::new(self.t(Msg::Incoming)).color(GREEN));
            ui.add_space(8.0);
            avatar(ui, &c, 140.0);
            ui.add_space(8.0);
            ui.label(RichText::new(c.who()).size(26.0).strong());
            if c.peer_name.is_some() {
                ui.label(RichText::new(&c.peer).size(18.0));
            }
            ui.add_space(16.0);
            ui.horizontal(|ui| {
                let w = ui.available_width();
                ui.add_space((w - 2.0 * 140.0 - 16.0).max(0.0) / 2.0);
                let ans = egui::Button::new(
                    RichText::new(self.t(Msg::Answer))
                        .size(18.0)
                        .color(Color32::WHITE),
                )
                .fill(GREEN)
                .min_size(Vec2::new(140.0, 40.0));
                if ui.add(ans).clicked() {
                    act = Some(Action::Answer);
                }
                ui.add_space(16.0);
                let dec = egui::Button::new(
                    RichText::new(self.t(Msg::Decline))
                        .size(18.0)
                        .color(Color32::WHITE),
                )
                .fill(RED)
                .min_size(Vec2::new(140.0, 40.0));
                if ui.add(dec).clicked() {
                    act = Some(Action::Decline);
                }
            });
        });
        if let Some(a) = act {
            self.model.act(a);
        }
    }

    fn call_state(&self, c: &CallView) -> String {
        let m = match c.state.as_str() {
            "dialing" => Msg::Calling,
            "ringing" => Msg::RingingOut,
            "answering" | "connecting" => Msg::Connecting,
            "transferring" => Msg::Transferring,
            _ if c.on_hold => Msg::OnHold,
            _ if c.held_by_peer => Msg::HeldByPeer,
            _ => Msg::Connected,
        };
        let mut s = self.t(m).to_string();
        if c.connected() {
            let secs = c.elapsed(self.now()) as u64;
            s = format!("{s}  {}:{:02}", secs / 60, secs % 60);
            s = format!(
                "{s}  ·  {}",
                self.t(if c.relayed { Msg::Relayed } else { Msg::Direct })
            );
        }
        if c.muted {
            s = format!("{s}  ·  {}", self.t(Msg::Muted));
        }
        if c.recording {
            s = format!("{s}  ·  {}", self.t(Msg::Recording));
        }
        s
    }

    fn in_call(&mut self, ui: &mut egui::Ui) {
        let Some(c) = self.model.call.clone() else {
            return;
        };
        let mut act = None;
        ui.add_space(8.0);
        ui.vertical_centered(|ui| {
            // The video area: the other end's picture (this end's own in
            // a corner), or its initials and name while there is none.
            let picture = self.peer_tex.as_ref().filter(|_| c.connected());
            let width = ui.available_width().min(380.0);
            let height = if picture.is_some() {
                width * 3.0 / 4.0
            } else {
                170.0
            };
            let (rect, _) = ui.allocate_exact_size(Vec2::new(width, height), egui::Sense::hover());
            ui.painter().rect_filled(rect, 8.0, Color32::from_gray(40));
            if let Some((_, tex)) = picture {
                let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
                ui.painter()
                    .image(tex.id(), fit(rect, tex.size_vec2()), uv, Color32::WHITE);
                if let Some((_, me)) = &self.me_tex {
                    let corner = egui::Rect::from_min_size(
                        rect.right_bottom() - Vec2::new(104.0, 80.0),
                        Vec2::new(96.0, 72.0),
                    );
                    ui.painter()
                        .image(me.id(), fit(corner, me.size_vec2()), uv, Color32::WHITE);
                }
                ui.add_space(6.0);
                ui.label(RichText::new(self.call_state(&c)).size(17.0));
                return;
            }
            let centre = rect.center() - Vec2::new(0.0, 14.0);
            ui.painter().circle_filled(centre, 48.0, colour_of(&c.peer));
            ui.painter().text(
                centre,
                egui::Align2::CENTER_CENTER,
                initials(c.who()),
                egui::FontId::proportional(36.0),
                Color32::WHITE,
            );
            ui.painter().text(
                rect.center_bottom() - Vec2::new(0.0, 14.0),
                egui::Align2::CENTER_CENTER,
                if c.peer_name.is_some() {
                    format!("{}  {}", c.who(), c.peer)
                } else {
                    c.peer.clone()
                },
                egui::FontId::proportional(18.0),
                Color32::WHITE,
            );
            ui.add_space(6.0);
            ui.label(RichText::new(self.call_state(&c)).size(17.0));
        });
        ui.add_space(8.0);
        if let Some(k) = &self.model.consult {
            ui.group(|ui| {
                ui.label(format!(
                    "{} {} — {}",
                    self.t(Msg::Consulting),
                    k.who(),
                    self.call_state(k)
                ));
                ui.horizontal(|ui| {
                    if ui.button(self.t(Msg::Complete)).clicked() {
                        act = Some(Action::Complete);
                    }
                    if ui.button(self.t(Msg::Cancel)).clicked() {
                        act = Some(Action::Cancel);
                    }
                });
            });
            ui.add_space(6.0);
        }
        let connected = c.connected();
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing = Vec2::new(8.0, 8.0);
            let hang = egui::Button::new(RichText::new(self.t(Msg::HangUp)).color(Color32::WHITE))
                .fill(RED)
                .min_size(Vec2::new(90.0, 32.0));
            if ui.add(hang).clicked() {
                act = Some(Action::HangUp);
            }
            let size = Vec2::new(80.0, 32.0);
            if connected && self.model.consult.is_none() {
                let (label, a) = if c.on_hold {
                    (Msg::Resume, Action::Resume)
                } else {
                    (Msg::Hold, Action::Hold)
                };
                if ui
                    .add(egui::Button::new(self.t(label)).min_size(size))
                    .clicked()
                {
                    act = Some(a);
                }
                let mute = egui::Button::new(self.t(Msg::Mute))
                    .selected(c.muted)
                    .min_size(size);
                if ui.add(mute).clicked() {
                    act = Some(Action::Mute);
                }
                let rec = egui::Button::new(self.t(Msg::Record))
                    .selected(c.recording)
                    .min_size(size);
                if ui.add(rec).clicked() {
                    act = Some(Action::Record);
                }
                if self.model.transfer.is_none() {
                    if ui
                        .add(egui::Button::new(self.t(Msg::Transfer)).min_size(size))
                        .clicked()
                    {
                        act = Some(Action::OpenTransfer { consult: false });
                    }
                    if ui
                        .add(egui::Button::new(self.t(Msg::Consult)).min_size(size))
                        .clicked()
                    {
                        act = Some(Action::OpenTransfer { consult: true });
                    }
                }
            }
        });
        if let Some((consult, _)) = self.model.transfer.clone() {
            ui.add_space(6.0);
            ui.group(|ui| {
                ui.label(self.t(if consult {
                    Msg::ConsultTitle
                } else {
                    Msg::TransferTitle
                }));
                ui.horizontal(|ui| {
                    let label = ui.label(self.t(Msg::TransferTarget));
                    if let Some((_, target)) = &mut self.model.transfer {
                        let r = ui
                            .add(egui::TextEdit::singleline(target).desired_width(120.0))
                            .labelled_by(label.id);
                        if r.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)) {
                            act = Some(Action::TransferTo);
                        }
                    }
                    let go = self.t(if consult { Msg::Consult } else { Msg::Transfer });
                    if ui.button(go).clicked() {
                        act = Some(Action::TransferTo);
                    }
                    if ui.button(self.t(Msg::Close)).clicked() {
                        act = Some(Action::CloseTransfer);
                    }
                });
            });
        }
        if connected {
            ui.add_space(6.0);
            egui::CollapsingHeader::new(self.t(Msg::Keypad))
                .default_open(false)
                .show(ui, |ui| {
                    if let Some(k) = keypad(ui) {
                        act = Some(Action::Keypad(k));
                    }
                });
        }
        if let Some(a) = act {
            self.model.act(a);
        }
    }

    fn history(&mut self, ui: &mut egui::Ui) {
        ui.heading(self.t(Msg::History));
        if self.model.history.is_empty() {
            ui.label(self.t(Msg::NoHistory));
        }
        let mut act = None;
        for h in &self.model.history {
            let arrow = match h.direction {
                Direction::In => self.t(Msg::In),
                Direction::Out => self.t(Msg::Out),
            };
            let who = match &h.peer_name {
                Some(n) => format!("{n} ({})", h.peer),
                None => h.peer.clone(),
            };
            let how = if h.missed() {
                self.t(Msg::Missed).to_string()
            } else {
                match h.seconds {
                    Some(s) if h.connected => format!("{}:{:02}", s as u64 / 60, s as u64 % 60),
                    _ => h.ended.clone(),
                }
            };
            let text = RichText::new(format!("{arrow}: {who}   {how}"));
            let text = if h.missed() { text.color(RED) } else { text };
            let b = ui
                .add(egui::Button::new(text).frame(false))
                .on_hover_text(self.t(Msg::Call));
            if b.clicked() {
                act = Some(Action::CallNumber(h.peer.clone()));
            }
        }
        if let Some(a) = act {
            self.model.act(a);
        }
    }

    fn messages(&mut self, ui: &mut egui::Ui) {
        ui.heading(self.t(Msg::Messages));
        if self.model.messages.is_empty() {
            ui.label(self.t(Msg::NoMessages));
        }
        let mut reply_to = None;
        for m in &self.model.messages {
            ui.horizontal_wrapped(|ui| {
                if m.mine {
                    ui.label(RichText::new(format!("{}: {}", self.t(Msg::To), m.from)).strong());
                } else if ui
                    .add(
                        egui::Button::new(RichText::new(format!("{}:", m.from)).strong())
                            .frame(false),
                    )
                    .clicked()
                {
                    reply_to = Some(m.from.clone());
                }
                ui.label(&m.body);
            });
        }
        if let Some(to) = reply_to {
            self.model.message_to = to;
        }
        ui.separator();
        let mut send = false;
        ui.horizontal(|ui| {
            let l = ui.label(self.t(Msg::To));
            ui.add(egui::TextEdit::singleline(&mut self.model.message_to).desired_width(90.0))
                .labelled_by(l.id);
        });
        ui.horizontal(|ui| {
            let l = ui.label(self.t(Msg::Text));
            let r = ui
                .add(egui::TextEdit::singleline(&mut self.model.message_body).desired_width(220.0))
                .labelled_by(l.id);
            if r.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)) {
                send = true;
            }
            if ui.button(self.t(Msg::Send)).clicked() {
                send = true;
            }
        });
        if send {
            self.model.act(Action::SendMessage);
        }
    }

    fn voicemail(&mut self, ui: &mut egui::Ui) {
        ui.heading(self.t(Msg::Voicemail));
        if self.model.voicemails.is_empty() {
            ui.label(self.t(Msg::NoVoicemail));
        }
        let mut act = None;
        for v in &self.model.voicemails {
            ui.horizontal(|ui| {
                let text = format!("{} {:.0} s", v.from, v.secs);
                ui.label(if v.heard {
                    RichText::new(text)
                } else {
                    RichText::new(text).strong()
                });
                if ui
                    .button(format!("{} {}", self.t(Msg::Play), v.id))
                    .clicked()
                {
                    act = Some(Action::PlayVoicemail(v.id));
                }
                if ui
                    .button(format!("{} {}", self.t(Msg::Delete), v.id))
                    .clicked()
                {
                    act = Some(Action::DeleteVoicemail(v.id));
                }
            });
        }
        if ui.button(self.t(Msg::Refresh)).clicked() {
            act = Some(Action::Tab(Tab::Voicemail));
        }
        if let Some(a) = act {
            self.model.act(a);
        }
    }

    fn contacts(&mut self, ui: &mut egui::Ui) {
        ui.heading(self.t(Msg::Contacts));
        ui.horizontal(|ui| {
            let l = ui.label(self.t(Msg::Search));
            ui.add(egui::TextEdit::singleline(&mut self.model.contact_filter).desired_width(200.0))
                .labelled_by(l.id);
        });
        ui.add_space(4.0);
        let m = &self.model;
        if m.contacts.is_empty() {
            ui.label(self.t(Msg::NoContacts));
            if let Some(p) = &m.contacts_problem {
                ui.label(RichText::new(p).small().weak());
            }
        }
        let mut act = None;
        let short = self.t(Msg::ShortCode);
        egui::Grid::new("contacts")
            .num_columns(2)
            .spacing(Vec2::new(16.0, 6.0))
            .show(ui, |ui| {
                for c in m.contacts.iter().filter(|c| c.matches(&m.contact_filter)) {
                    let text = match (&c.code, &c.name) {
                        (Some(code), _) => format!("{code}  {}", c.number),
                        (None, Some(name)) => format!("{name}  {}", c.number),
                        (None, None) => c.number.clone(),
                    };
                    let b = ui
                        .add(egui::Button::new(RichText::new(text).size(15.0)).frame(false))
                        .on_hover_text(self.t(Msg::Call));
                    if b.clicked() {
                        act = Some(Action::CallNumber(c.number.clone()));
                    }
                    ui.label(
                        RichText::new(if c.code.is_some() { short } else { "" })
                            .small()
                            .weak(),
                    );
                    ui.end_row();
                }
            });
        ui.add_space(6.0);
        if ui.button(self.t(Msg::Refresh)).clicked() {
            act = Some(Action::Tab(Tab::Contacts));
        }
        if let Some(a) = act {
            self.model.act(a);
        }
    }

    fn settings(&mut self, ui: &mut egui::Ui) {
        ui.heading(self.t(Msg::Settings));
        ui.add_space(6.0);
        let mut lang = self.model.lang;
        ui.horizontal(|ui| {
            ui.label(self.t(Msg::Language));
            ui.radio_value(&mut lang, Lang::En, "English");
            ui.radio_value(&mut lang, Lang::Ko, "한국어");
        });
        if lang != self.model.lang {
            self.model.act(Action::SetLang(lang));
        }
        ui.add_space(6.0);
        ui.label(RichText::new(self.t(Msg::AudioDevices)).strong());
        let mut act = None;
        let m = &self.model;
        egui::Grid::new("audio").num_columns(2).show(ui, |ui| {
            let rows = [
                (
                    Msg::Microphone,
                    AudioWhat::Microphone,
                    &m.audio.input,
                    &m.inputs,
                ),
                (
                    Msg::Speaker,
                    AudioWhat::Speaker,
                    &m.audio.output,
                    &m.outputs,
                ),
                (
                    Msg::RingDevice,
                    AudioWhat::RingDevice,
                    &m.audio.ring_out,
                    &m.outputs,
                ),
            ];
            for (label, what, now, devices) in rows {
                let l = ui.label(label.text(m.lang));
                let default = if what == AudioWhat::RingDevice {
                    Msg::SameAsSpeaker
                } else {
                    Msg::SystemDefault
                };
                // None and `device` are both the system's default.
                let now = now.as_deref().filter(|s| *s != "device");
                let name_of = |spec: Option<&str>| match spec {
                    None => default.text(m.lang).to_string(),
                    Some(s) => devices
                        .iter()
                        .find(|d| d.spec == s)
                        .map_or_else(|| s.to_string(), |d| d.name.clone()),
                };
                egui::ComboBox::from_id_salt(what.key())
                    .selected_text(name_of(now))
                    .width(220.0)
                    .show_ui(ui, |ui| {
                        if ui.selectable_label(now.is_none(), name_of(None)).clicked() {
                            act = Some(Action::SetAudio { what, spec: None });
                        }
                        for d in devices {
                            let sel = now == Some(d.spec.as_str());
                            if ui.selectable_label(sel, &d.name).clicked() && !sel {
                                act = Some(Action::SetAudio {
                                    what,
                                    spec: Some(d.spec.clone()),
                                });
                            }
                        }
                    })
                    .response
                    .labelled_by(l.id);
                ui.end_row();
            }
        });
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            let l = ui.label(self.t(Msg::RingtoneFile));
            let r = ui
                .add(
                    egui::TextEdit::singleline(&mut self.model.ringtone_file)
                        .hint_text(Msg::BuiltInRing.text(self.model.lang))
                        .desired_width(180.0),
                )
                .labelled_by(l.id);
            if r.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter)) {
                act = Some(Action::UseRingtoneFile);
            }
            if ui.button(self.t(Msg::Use)).clicked() {
                act = Some(Action::UseRingtoneFile);
            }
            if ui.button(self.t(Msg::BuiltInRing)).clicked() {
                self.model.ringtone_file.clear();
                act = Some(Action::UseRingtoneFile);
            }
        });
        ui.label(RichText::new(self.t(Msg::AudioHint)).weak().small());
        if let Some(a) = act {
            self.model.act(a);
        }
    }
}

/// A keypad; the key pressed, if one was.
fn keypad(ui: &mut egui::Ui) -> Option<char> {
    let mut hit = None;
    ui.horizontal(|ui| {
        // Three keys of 52 points and two gaps of 6: centred.
        ui.add_space(((ui.available_width() - 168.0) / 2.0).max(0.0));
        egui::Grid::new(ui.scope_id().with("keypad"))
            .spacing(Vec2::new(6.0, 6.0))
            .show(ui, |ui| {
                for row in ["123", "456", "789", "*0#"] {
                    for k in row.chars() {
                        let b = egui::Button::new(RichText::new(k.to_string()).size(18.0))
                            .min_size(Vec2::new(52.0, 34.0));
                        if ui.add(b).clicked() {
                            hit = Some(k);
                        }
                    }
                    ui.end_row();
                }
            });
    });
    hit
}

/// A pairing code in groups of three digits, easier to read aloud.
fn spaced_code(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    chars
        .chunks(3)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Up to two initials of a name (or the number's last two digits).
pub fn initials(who: &str) -> String {
    let words: Vec<&str> = who.split_whitespace().collect();
    if who.chars().all(|c| c.is_ascii_digit() || "*#+".contains(c)) {
        let n: Vec<char> = who.chars().collect();
        return n[n.len().saturating_sub(2)..].iter().collect();
    }
    match words.as_slice() {
        [] => "?".into(),
        [one] => one.chars().take(2).collect(),
        [first, .., last] => [first.chars().next(), last.chars().next()]
            .iter()
            .flatten()
            .collect(),
    }
}

/// A steady colour per peer.
fn colour_of(peer: &str) -> Color32 {
    let h = peer
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let palette = [
        Color32::from_rgb(0x3b, 0x6e, 0xa8),
        Color32::from_rgb(0x8e, 0x44, 0xad),
        Color32::from_rgb(0x16, 0x8f, 0x7a),
        Color32::from_rgb(0xb0, 0x5a, 0x2c),
        Color32::from_rgb(0x5d, 0x6d, 0x7e),
    ];
    palette[(h % palette.len() as u32) as usize]
}

fn avatar(ui: &mut egui::Ui, c: &CallView, size: f32) {
    let (rect, _) = ui.allocate_exact_size(Vec2::splat(size * 0.6), egui::Sense::hover());
    ui.painter()
        .circle_filled(rect.center(), size * 0.3, colour_of(&c.peer));
    ui.painter().text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        initials(c.who()),
        egui::FontId::proportional(size * 0.22),
        Color32::WHITE,
    );
}

impl eframe::App for PhoneApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        PhoneApp::logic(self, ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        PhoneApp::ui(self, ui);
    }
}
