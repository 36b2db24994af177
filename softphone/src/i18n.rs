//! The window's words in English and Korean. The English button names are
//! an interface: people and tests find the controls by them.

/// The window's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ko,
}

impl Lang {
    /// The language of a POSIX locale name (`ko_KR.UTF-8` is Korean;
    /// anything else English).
    pub fn from_locale(locale: &str) -> Lang {
        if locale.to_ascii_lowercase().starts_with("ko") {
            Lang::Ko
        } else {
            Lang::En
        }
    }

    /// The system's language: `LC_ALL`, then `LC_MESSAGES`, then `LANG`,
    /// as the C library picks them.
    pub fn from_env() -> Lang {
        ["LC_ALL", "LC_MESSAGES", "LANG"]
            .iter()
            .filter_map(|k| std::env::var(k).ok())
            .find(|v| !v.is_empty())
            .map_or(Lang::En, |v| Lang::from_locale(&v))
    }
}

/// Every text the window shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    Number,
    Call,
    Answer,
    Decline,
    HangUp,
    Hold,
    Resume,
    Mute,
    Unmute,
    Transfer,
    Consult,
    Complete,
    Cancel,
    Record,
    StopRecording,
    Phone,
    History,
    Messages,
    Voicemail,
    Settings,
    NoAgentTitle,
    NoAgentBody,
    NoAgentShort,
    ConnectingAgent,
    Retrying,
    PairingTitle,
    PairingBody,
    PairingWaiting,
    LinkRegistered,
    LinkConnecting,
    LinkSearching,
    LinkLoggingIn,
    LinkPending,
    LinkDisconnected,
    Incoming,
    Calling,
    RingingOut,
    Connecting,
    Connected,
    OnHold,
    HeldByPeer,
    Transferring,
    Direct,
    Relayed,
    Muted,
    Recording,
    Consulting,
    TransferTitle,
    ConsultTitle,
    TransferTarget,
    Close,
    Keypad,
    Dnd,
    Forward,
    ForwardTo,
    MessagesWaiting,
    VoicemailWaiting,
    MissedCalls,
    NoHistory,
    NoMessages,
    NoVoicemail,
    To,
    Text,
    Send,
    Play,
    Delete,
    Refresh,
    Language,
    Ringtone,
    AudioDevices,
    In,
    Out,
    Missed,
    CallEnded,
    CallLostAgent,
    EndedBusy,
    EndedRejected,
    EndedNoAnswer,
    EndedUnknown,
    EndedOffline,
    EndedFailed,
    CannotCall,
    Failed,
    Done,
    MessageSent,
    EmptyNumber,
    LongNumber,
    BadNumber,
    EmptyMessage,
    NotApproved,
    Busy,
    YourNumber,
    Microphone,
    Speaker,
    AudioHint,
}

impl Msg {
    /// The text in `lang`.
    pub fn text(self, lang: Lang) -> &'static str {
        let (en, ko) = self.both();
        match lang {
            Lang::En => en,
            Lang::Ko => ko,
        }
    }

    fn both(self) -> (&'static str, &'static str) {
        use Msg::*;
        match self {
            Number => ("Number", "번호"),
            Call => ("Call", "전화 걸기"),
            Answer => ("Answer", "받기"),
            Decline => ("Decline", "거절"),
            HangUp => ("Hang up", "끊기"),
            Hold => ("Hold", "보류"),
            Resume => ("Resume", "보류 해제"),
            Mute => ("Mute", "음소거"),
            Unmute => ("Unmute", "음소거 해제"),
            Transfer => ("Transfer", "돌려주기"),
            Consult => ("Consult", "상담 후 돌려주기"),
            Complete => ("Complete", "연결 완료"),
            Cancel => ("Cancel", "취소"),
            Record => ("Record", "녹음"),
            StopRecording => ("Stop recording", "녹음 중지"),
            Phone => ("Phone", "전화"),
            History => ("History", "통화 기록"),
            Messages => ("Messages", "메시지"),
            Voicemail => ("Voicemail", "음성사서함"),
            Settings => ("Settings", "설정"),
            NoAgentTitle => (
                "The phone service is not running",
                "전화 서비스가 실행되고 있지 않습니다",
            ),
            NoAgentBody => (
                "Start it with:  systemctl --user start keyline-agent\n(or ask your administrator). This window connects by itself when it runs.",
                "다음 명령으로 시작하세요:  systemctl --user start keyline-agent\n(또는 관리자에게 문의하세요). 서비스가 시작되면 이 창이 자동으로 연결됩니다.",
            ),
            NoAgentShort => ("The phone service is not running", "전화 서비스가 실행되고 있지 않습니다"),
            ConnectingAgent => ("Connecting to the phone service…", "전화 서비스에 연결하는 중…"),
            Retrying => ("Trying again every second.", "1초마다 다시 시도합니다."),
            PairingTitle => ("Waiting for approval", "승인을 기다리는 중"),
            PairingBody => (
                "Tell your administrator this pairing code. They approve this workstation on the gateway with it:",
                "관리자에게 이 연결 코드를 알려 주세요. 관리자가 게이트웨이에서 이 코드로 이 컴퓨터를 승인합니다:",
            ),
            PairingWaiting => (
                "The phone is ready as soon as it is approved.",
                "승인되면 바로 전화를 사용할 수 있습니다.",
            ),
            LinkRegistered => ("Ready", "사용 가능"),
            LinkConnecting => ("Connecting", "연결 중"),
            LinkSearching => ("Looking for the gateway", "게이트웨이를 찾는 중"),
            LinkLoggingIn => ("Logging in", "로그인 중"),
            LinkPending => ("Waiting for approval", "승인 대기 중"),
            LinkDisconnected => ("Not connected", "연결 끊김"),
            Incoming => ("Incoming call", "전화가 왔습니다"),
            Calling => ("Calling…", "거는 중…"),
            RingingOut => ("Ringing…", "신호 가는 중…"),
            Connecting => ("Connecting…", "연결 중…"),
            Connected => ("Connected", "통화 중"),
            OnHold => ("On hold", "보류 중"),
            HeldByPeer => ("Held by the other side", "상대방이 보류함"),
            Transferring => ("Transferring…", "돌려주는 중…"),
            Direct => ("direct", "직접 연결"),
            Relayed => ("relayed", "중계 연결"),
            Muted => ("muted", "음소거됨"),
            Recording => ("recording", "녹음 중"),
            Consulting => ("Consulting", "상담 중"),
            TransferTitle => ("Transfer the call to", "통화를 돌려줄 번호"),
            ConsultTitle => ("Consult before transferring to", "상담할 번호"),
            TransferTarget => ("Transfer to", "돌려줄 번호"),
            Close => ("Close", "닫기"),
            Keypad => ("Keypad", "키패드"),
            Dnd => ("Do not disturb", "방해 금지"),
            Forward => ("Forward all calls", "모든 전화 착신 전환"),
            ForwardTo => ("Forward to", "착신 전환 번호"),
            MessagesWaiting => ("New messages", "새 메시지"),
            VoicemailWaiting => ("New voicemail", "새 음성 메시지"),
            MissedCalls => ("Missed calls", "부재중 전화"),
            NoHistory => ("No calls yet.", "통화 기록이 없습니다."),
            NoMessages => ("No messages.", "메시지가 없습니다."),
            NoVoicemail => ("No voicemail.", "음성 메시지가 없습니다."),
            To => ("To", "받는 사람"),
            Text => ("Text", "내용"),
            Send => ("Send", "보내기"),
            Play => ("Play", "듣기"),
            Delete => ("Delete", "삭제"),
            Refresh => ("Refresh", "새로 고침"),
            Language => ("Language", "언어"),
            Ringtone => ("Ringtone", "벨소리"),
            AudioDevices => ("Audio", "오디오"),
            In => ("in", "받은 전화"),
            Out => ("out", "건 전화"),
            Missed => ("missed", "부재중"),
            CallEnded => ("Call ended", "통화가 끝났습니다"),
            CallLostAgent => (
                "The call ended: the phone service stopped",
                "전화 서비스가 멈춰 통화가 끝났습니다",
            ),
            EndedBusy => ("The line is busy", "통화 중입니다"),
            EndedRejected => ("The call was declined", "상대방이 전화를 거절했습니다"),
            EndedNoAnswer => ("No answer", "응답이 없습니다"),
            EndedUnknown => ("No such number", "없는 번호입니다"),
            EndedOffline => ("That phone is not connected", "상대방 전화가 연결되어 있지 않습니다"),
            EndedFailed => ("The call failed", "통화에 실패했습니다"),
            CannotCall => ("Cannot call", "전화를 걸 수 없습니다"),
            Failed => ("That did not work", "실행하지 못했습니다"),
            Done => ("Done", "완료"),
            MessageSent => ("Message sent", "메시지를 보냈습니다"),
            EmptyNumber => ("Type a number to call", "걸 번호를 입력하세요"),
            LongNumber => (
                "That number is too long (at most 32 characters)",
                "번호가 너무 깁니다 (최대 32자)",
            ),
            BadNumber => ("That number has characters a number cannot have", "번호에 쓸 수 없는 문자가 있습니다"),
            EmptyMessage => ("Type a message first", "메시지를 입력하세요"),
            NotApproved => ("This workstation is not approved yet", "이 컴퓨터는 아직 승인되지 않았습니다"),
            Busy => ("Finish the current call first", "지금 통화를 먼저 끝내세요"),
            YourNumber => ("Your number", "내 번호"),
            Microphone => ("Microphone", "마이크"),
            Speaker => ("Speaker", "스피커"),
            AudioHint => (
                "The phone service owns the audio devices: they are chosen where it is started (keyline-agent run --audio-in, --audio-out, --ringtone).",
                "오디오 장치는 전화 서비스가 관리합니다. 서비스를 시작할 때 정합니다 (keyline-agent run --audio-in, --audio-out, --ringtone).",
            ),
        }
    }
}
