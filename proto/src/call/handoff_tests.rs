//! One hand-off at a time: no consultation or transfer from a
//! consultation.

use super::*;

/// Found by the property test: a consultation must not start another
/// consultation (or a blind transfer) from the consultation call.
#[test]
fn one_hand_off_at_a_time() {
    let now = Instant::now();
    let mut sb = Switchboard::new(Config::default());
    for l in ["201", "202", "203", "204"] {
        sb.add_line(l);
        sb.handle_line_up(now, l);
    }
    sb.handle_dial(now, "203", 1, "201");
    sb.handle_answer(now, "201", 1).expect("answer");
    sb.handle_consult(now, "203", 2, 1, "202").expect("consult");
    sb.handle_answer(now, "202", 2).expect("answer consult");
    assert_eq!(
        sb.handle_consult(now, "203", 3, 2, "204"),
        Err(CallError::TransferPending)
    );
    assert_eq!(
        sb.handle_transfer(now, "203", 4, 2, "204"),
        Err(CallError::TransferPending)
    );
    assert_eq!(
        sb.handle_transfer(now, "203", 5, 1, "204"),
        Err(CallError::TransferPending)
    );
}
