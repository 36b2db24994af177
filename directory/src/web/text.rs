//! The site's words in English and Korean: labels and buttons (which
//! people and tests rely on) and the messages handlers give.

use keyline_web::Lang;

macro_rules! texts {
    ($($field:ident: $en:expr, $ko:expr;)*) => {
        /// Every fixed text of the pages, in one language.
        #[derive(Debug)]
        pub struct Text {
            $(pub $field: &'static str,)*
        }
        pub static EN: Text = Text { $($field: $en,)* };
        pub static KO: Text = Text { $($field: $ko,)* };
    };
}

texts! {
    site: "Keyline directory", "Keyline 디렉터리";
    skip: "Skip to content", "본문으로 건너뛰기";
    home: "Home", "홈";
    sign_up: "Sign up", "가입하기";
    log_in: "Log in", "로그인";
    log_out: "Log out", "로그아웃";
    account: "Account", "계정";
    setup: "Set up your phone", "전화 설정하기";
    operator: "Operator", "운영";
    language: "Language", "언어";
    intro: "Keyline gives you a phone number that rings wherever your computer is. Choose an ID and a number here, install the phone software, and it registers with this directory each time it starts; whoever dials your number reaches you.",
           "Keyline은 컴퓨터가 있는 곳 어디서나 울리는 전화번호를 드립니다. 여기서 ID와 번호를 고르고 전화 프로그램을 설치하면, 프로그램이 시작할 때마다 이 디렉터리에 등록되어 누가 번호로 걸어도 연결됩니다.";
    guide_title: "The phone software", "전화 프로그램";
    guide_1: "Sign up: choose an ID, a password and a number (digits, letters, any script).", "가입: ID, 비밀번호, 번호(숫자, 글자, 어떤 문자든)를 고릅니다.";
    guide_2: "Download the package and your settings file from the set-up page.", "설정 페이지에서 패키지와 설정 파일을 내려받습니다.";
    guide_3: "Start keyline-agent terminal with the command shown there; it pins this directory's fingerprint and registers your number.", "그곳에 나온 명령으로 keyline-agent terminal을 시작하면 이 디렉터리의 지문을 고정하고 번호를 등록합니다.";
    id: "ID", "ID";
    password: "Password", "비밀번호";
    repeat_password: "Repeat password", "비밀번호 확인";
    number: "Number", "번호";
    invite_code: "Invite code", "초대 코드";
    old_password: "Old password", "이전 비밀번호";
    new_password: "New password", "새 비밀번호";
    new_id: "New ID", "새 ID";
    forward_to: "Forward to", "착신 전환 번호";
    save: "Save", "저장";
    change_password: "Change password", "비밀번호 변경";
    change_id: "Change ID", "ID 변경";
    sign_out_device: "Sign out this device", "이 기기 로그아웃";
    delete_account: "Delete account", "계정 삭제";
    delete: "Delete", "삭제";
    signup_closed: "Sign-up is closed on this directory; ask its operator for an account.", "이 디렉터리는 가입을 받지 않습니다. 운영자에게 계정을 요청하세요.";
    signup_invite: "Sign-up here needs an invite code from the operator.", "이곳에 가입하려면 운영자의 초대 코드가 필요합니다.";
    id_hint: "Up to 64 characters, no spaces.", "64자 이하, 공백 없이.";
    password_hint: "At least 8 characters.", "8자 이상.";
    number_hint: "Digits, letters or a name in any script; this is what people dial.", "숫자, 글자 또는 어떤 문자의 이름이든; 사람들이 거는 번호입니다.";
    have_account: "Already have an account?", "이미 계정이 있나요?";
    fingerprint: "Directory fingerprint", "디렉터리 지문";
    command: "Command to start the phone software", "전화 프로그램 시작 명령";
    command_note: "Put your password alone on the first line of the password file first; it never leaves your computer except to log in.", "먼저 비밀번호 파일의 첫 줄에 비밀번호만 적으세요. 비밀번호는 로그인할 때 말고는 컴퓨터 밖으로 나가지 않습니다.";
    config_file: "Settings file", "설정 파일";
    download_config: "Download keyline-terminal.toml", "keyline-terminal.toml 내려받기";
    config_note: "The file names this directory, its fingerprint, your ID and numbers; it holds no password.", "이 파일에는 디렉터리 주소, 지문, ID와 번호가 들어 있고 비밀번호는 없습니다.";
    packages: "Packages", "패키지";
    no_packages: "No packages are offered here; install keyline from your distribution.", "여기서 제공하는 패키지가 없습니다. 배포판에서 keyline을 설치하세요.";
    file: "File", "파일";
    size: "Size", "크기";
    sha256: "SHA-256", "SHA-256";
    numbers: "Numbers", "번호";
    numbers_note: "The first number is the one callees see; Show to callees makes another the first.", "첫 번째 번호가 받는 사람에게 보입니다. 다른 번호를 보이려면 '받는 사람에게 보이기'를 누르세요.";
    shown_to_callees: "shown to callees", "받는 사람에게 보임";
    show_this_number: "Show to callees", "받는 사람에게 보이기";
    number_shown: "Callees now see this number when you call.", "이제 전화를 걸면 받는 사람에게 이 번호가 보입니다.";
    devices: "Devices", "기기";
    client: "Program", "프로그램";
    node: "Directory node", "디렉터리 노드";
    no_devices: "No device is logged in now.", "지금 로그인한 기기가 없습니다.";
    address: "Address", "주소";
    name: "Name", "이름";
    registered: "Registered numbers", "등록된 번호";
    refreshed: "Last refresh", "마지막 갱신";
    seconds_ago: "s ago", "초 전";
    not_registered: "not registered", "등록 안 됨";
    forwarding: "Forwarding", "착신 전환";
    forward_on: "Forward calls", "착신 전환 사용";
    when_always: "Always", "항상";
    when_offline: "When offline (not registered)", "연결되지 않았을 때";
    mail: "Mail", "메일";
    no_mail: "No messages.", "메시지가 없습니다.";
    from: "From", "보낸 번호";
    to: "To", "받는 번호";
    voice_mail: "Voice mail", "음성 메시지";
    text_message: "Text", "문자";
    delete_note: "Deleting the account frees nothing at once: its numbers are held back from new accounts for a while.", "계정을 지워도 번호는 한동안 다른 계정이 가져갈 수 없습니다.";
    password_changed: "Your password was changed; your other sessions and devices were signed out.", "비밀번호가 바뀌었습니다. 다른 세션과 기기는 로그아웃되었습니다.";
    id_changed: "Your ID was changed; your numbers and mail stay, your other sessions were signed out.", "ID가 바뀌었습니다. 번호와 메일은 그대로이고 다른 세션은 로그아웃되었습니다.";
    forward_saved: "Forwarding saved.", "착신 전환이 저장되었습니다.";
    device_signed_out: "The device was signed out.", "기기가 로그아웃되었습니다.";
    device_asked: "The directory node the device is connected to was asked to sign it out; it disappears from the list once it has.", "기기가 연결된 디렉터리 노드에 로그아웃을 요청했습니다. 로그아웃되면 목록에서 사라집니다.";
    mail_deleted: "The message was deleted.", "메시지가 삭제되었습니다.";
    account_deleted: "Your account was deleted.", "계정이 삭제되었습니다.";
    welcome: "Your account is ready. Set up your phone below.", "계정이 준비되었습니다. 아래에서 전화를 설정하세요.";
    not_found: "Not found", "찾을 수 없음";
    not_found_text: "There is no such page here.", "그런 페이지가 없습니다.";
    forbidden: "Refused", "거부됨";
    forbidden_text: "The form was missing its security token or it expired. Go back, reload the page and try again.", "양식에 보안 토큰이 없거나 만료되었습니다. 돌아가서 페이지를 새로 고친 뒤 다시 시도하세요.";
    error_title: "Something went wrong", "문제가 생겼습니다";
    accounts: "Accounts", "계정";
    admin: "Admin", "관리자";
    bindings: "Bindings", "등록";
    calls_now: "Calls now", "진행 중인 통화";
    relayed_bytes: "Relayed bytes", "중계한 바이트";
    signup_mode: "Sign-up", "가입";
    invites: "Invite codes", "초대 코드";
    create_invite: "Create invite code", "초대 코드 만들기";
    new_invite: "New invite code (shown once)", "새 초대 코드 (한 번만 표시)";
    used_by: "Used by", "사용한 계정";
    unused: "unused", "사용 안 함";
    code_hash: "Code (hash)", "코드 (해시)";
    created: "Created", "만든 시각";
    state: "State", "상태";
    when_busy: "When busy", "통화 중일 때";
    when_no_answer: "When not answered", "받지 않을 때";
    new_number: "New number", "새 번호";
    add_number: "Add number", "번호 추가";
    remove_number: "Remove", "삭제";
    last_number: "An account keeps at least one number.", "계정에는 번호가 하나 이상 있어야 합니다.";
    number_added: "The number was added. Log in again on your devices to register it.", "번호가 추가되었습니다. 등록하려면 기기에서 다시 로그인하세요.";
    number_removed: "The number was removed; it no longer rings anywhere.", "번호가 삭제되었습니다. 이제 어디서도 울리지 않습니다.";
    dnd: "Do not disturb", "방해 금지";
    dnd_note: "While it is on, the number does not ring: calls follow a “When busy” forwarding rule, or callers are offered to leave mail.", "켜져 있는 동안 번호가 울리지 않습니다. 전화는 “통화 중일 때” 착신 전환을 따르거나, 건 사람에게 메시지를 남기도록 안내합니다.";
    dnd_is_on: "Do-not-disturb is on", "방해 금지 켜짐";
    dnd_is_off: "Do-not-disturb is off", "방해 금지 꺼짐";
    dnd_turn_on: "Turn on do-not-disturb", "방해 금지 켜기";
    dnd_turn_off: "Turn off do-not-disturb", "방해 금지 끄기";
    dnd_saved: "Do-not-disturb saved.", "방해 금지가 저장되었습니다.";
    search: "Search", "검색";
    search_accounts: "Search accounts (ID or number)", "계정 검색 (ID 또는 번호)";
    no_match: "No account matches.", "맞는 계정이 없습니다.";
    all_numbers: "All numbers", "모든 번호";
    account_col: "Account", "계정";
    rule: "Forwarding", "착신 전환";
    sessions_online: "Sessions online", "접속 중인 세션";
    none_now: "None now.", "지금은 없습니다.";
    since: "Since", "시작";
    expires_in: "Expires in", "만료까지";
    seconds: "s", "초";
    call_state: "State", "상태";
    relayed: "Relayed", "중계";
    caller: "Caller", "건 번호";
    callee: "Called", "받는 번호";
    forwarding_note: "Each number can forward on several conditions at once, each to its own number; “Always” comes before all the others while it is on. A rule that is off keeps its number.", "번호마다 여러 조건의 착신 전환을 함께 쓸 수 있고 조건마다 다른 번호로 보낼 수 있습니다. “항상”이 켜져 있으면 다른 조건보다 먼저 적용됩니다. 꺼 둔 규칙도 번호는 그대로 남습니다.";
    forwarding_of: "Forwarding of", "착신 전환:";
    call_history: "Call history", "통화 기록";
    call_history_note: "This account's calls as the directory saw them, newest first.", "디렉터리가 본 이 계정의 통화입니다. 최근 통화가 먼저 나옵니다.";
    no_calls: "No calls yet.", "아직 통화가 없습니다.";
    col_time: "Time", "시각";
    col_direction: "Direction", "방향";
    col_other: "Other party", "상대방";
    col_result: "Result", "결과";
    col_duration: "Duration", "통화 시간";
    dir_in: "In", "수신";
    dir_out: "Out", "발신";
    outcome_answered: "Answered", "통화함";
    outcome_declined: "Declined", "거절됨";
    outcome_busy: "Busy", "통화 중";
    outcome_no_answer: "No answer", "응답 없음";
    outcome_cancelled: "Cancelled", "취소됨";
    outcome_missed: "Missed", "부재중";
    outcome_offline: "Offline", "연결 안 됨";
    outcome_unknown: "Unknown number", "없는 번호";
    outcome_forwarded: "Forwarded to", "착신 전환:";
    outcome_failed: "Failed", "실패";
    via_relay: "through the relay", "중계 경유";
    newer_calls: "Newer calls", "최근 통화";
    older_calls: "Older calls", "이전 통화";
}

impl Text {
    pub fn of(lang: Lang) -> &'static Text {
        match lang {
            Lang::Ko => &KO,
            Lang::En => &EN,
        }
    }
}

/// A message in the page's language.
pub fn pick(lang: Lang, en: &str, ko: &str) -> String {
    match lang {
        Lang::Ko => ko.to_string(),
        Lang::En => en.to_string(),
    }
}
