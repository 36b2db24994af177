// The directory's account and operator pages in headless Chromium, driven
// by tests/tests/directory_web.rs (the_account_and_operator_pages_in_a_
// browser): numbers added and removed, do-not-disturb, forwarding when not
// answered, then busy, no-answer and offline rules at once (each followed
// by the next call, and listed by the terminal's `forward list`), the
// operator's lists and search, in English and Korean; sign-up by invite
// code (a made-up one and a used one refused), changing the ID (the
// number and waiting mail stay, the terminal logged in with the old ID
// loses its session) and deleting the account (its number held back).
// Steps that need terminals are asked of the Rust test on stdout
// ("STEP name") and answered on stdin ("OK"). Any failed check exits
// non-zero.
//
// Environment: SITE_URL, PASSWORD, SHOTS (optional).

import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const url = process.env.SITE_URL;
const password = process.env.PASSWORD;
const shots = process.env.SHOTS;
if (shots) mkdirSync(shots, { recursive: true });

const lines = createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (l) => { const w = waiting.shift(); if (w) w(l); });
function step(name) {
  return new Promise((resolve, reject) => {
    waiting.push((l) => l.startsWith("OK") ? resolve(l.slice(2).trim()) : reject(new Error(`${name}: ${l}`)));
    process.stdout.write(`STEP ${name}\n`);
  });
}

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.error(`ok: ${what}`);
}

async function axe(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => await window.axe.run(document));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(bad.length === 0, `axe on ${name}: no serious violations ${JSON.stringify(bad.map((v) => [v.id, v.nodes.map((n) => n.target)]))}`);
}

async function shot(page, name) {
  if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

async function signUp(page, id, pw, number, invite) {
  await page.goto(`${url}/signup`);
  await page.getByLabel("ID", { exact: true }).fill(id);
  await page.getByLabel("Password", { exact: true }).fill(pw);
  await page.getByLabel("Repeat password", { exact: true }).fill(pw);
  await page.getByLabel("Number", { exact: true }).fill(number);
  if (invite !== undefined) await page.getByLabel("Invite code").fill(invite);
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.waitForLoadState();
}

async function logIn(page, id, pw) {
  await page.goto(`${url}/login`);
  await page.getByLabel("ID", { exact: true }).fill(id);
  await page.getByLabel("Password", { exact: true }).fill(pw);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForLoadState();
}

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
let failed = false;
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, locale: "en-US" });
  const page = await context.newPage();

  await page.goto(`${url}/signup`);
  await page.getByLabel("ID", { exact: true }).fill("jiwoo");
  await page.getByLabel("Password", { exact: true }).fill(password);
  await page.getByLabel("Repeat password", { exact: true }).fill(password);
  await page.getByLabel("Number", { exact: true }).fill("지우");
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.waitForURL(/\/setup/);
  await page.goto(`${url}/account`);

  // Numbers: one added in another form of writing, canonicalised; a taken
  // one refused next to the field.
  await page.getByLabel("New number").fill("Ji-Woo 2");
  await page.getByRole("button", { name: "Add number" }).click();
  await page.waitForURL(/done=number-added/);
  const numbers = await page.locator("#numbers .number").allTextContents();
  check(JSON.stringify(numbers) === JSON.stringify(["지우", "jiwoo2"]), `the number is added canonically: ${numbers}`);
  await page.getByLabel("New number").fill("20 02");
  await page.getByRole("button", { name: "Add number" }).click();
  await page.waitForLoadState();
  check((await page.locator("#new-number-error").textContent()).includes("2002 is taken"), "a taken number is refused next to the field");
  check(await page.getByLabel("New number").getAttribute("aria-invalid") === "true", "the field is marked invalid");
  check(await page.locator("#numbers .number").count() === 2, "nothing was added");
  await axe(page, "account with two numbers and an error");
  await shot(page, "account-numbers");

  await step("terminal-j");
  check(true, "a terminal registers both numbers");
  await page.goto(`${url}/account`);
  await page.getByRole("button", { name: "Remove jiwoo2" }).click();
  await page.waitForURL(/done=number-removed/);
  check(await page.getByText("The number was removed").isVisible(), "the number is removed");
  await step("unbound-jiwoo2");
  check(true, "the removed number is unbound at once; the other stays");
  check(await page.getByRole("button", { name: /^Remove/ }).count() === 0, "the last number cannot be removed");

  // Do-not-disturb: nothing rings; then off again.
  await page.getByRole("button", { name: "Turn on do-not-disturb" }).click();
  await page.waitForURL(/done=dnd/);
  check((await page.locator("#dnd-state-1").textContent()).includes("Do-not-disturb is on"), "do-not-disturb is on");
  await step("dnd-call");
  check(true, "a call to a do-not-disturb number does not ring");
  await page.getByRole("button", { name: "Turn off do-not-disturb" }).click();
  await page.waitForURL(/done=dnd/);
  check((await page.locator("#dnd-state-1").textContent()).includes("Do-not-disturb is off"), "do-not-disturb is off");

  // Forwarding when not answered: a bad target first, then 3003.
  const noAnswer = page.locator("#fwd-no-answer-1");
  const save = () => page.getByRole("button", { name: "Save Forwarding of 지우" }).click();
  await noAnswer.getByLabel("Forward calls").check();
  await noAnswer.getByLabel("Forward to").fill("nobody-at-all");
  await save();
  await page.waitForLoadState();
  check((await page.locator("#fwd-error-no-answer-1").textContent()).includes("no such number"), "an unknown target is refused next to the field");
  check(await page.locator("#fwd-no-answer-1").getByLabel("Forward calls").isChecked(), "what was sent is kept");
  await page.locator("#fwd-no-answer-1").getByLabel("Forward to").fill("3003");
  await save();
  await page.waitForURL(/done=forward/);
  check(await page.locator("#fwd-no-answer-1").getByLabel("Forward to").inputValue() === "3003", "forwarding when not answered saved");
  await step("no-answer-call");
  check(true, "an unanswered call goes on to the forwarding target");

  // Several rules at once: busy to 3003 and offline to 2002 beside the
  // one when not answered, in one form.
  await page.locator("#fwd-busy-1").getByLabel("Forward calls").check();
  await page.locator("#fwd-busy-1").getByLabel("Forward to").fill("3003");
  await page.locator("#fwd-unregistered-1").getByLabel("Forward calls").check();
  await page.locator("#fwd-unregistered-1").getByLabel("Forward to").fill("20 02");
  await save();
  await page.waitForURL(/done=forward/);
  check(await page.locator("#fwd-unregistered-1").getByLabel("Forward to").inputValue() === "2002", "the offline rule is kept canonically");
  check(await page.locator("#fwd-no-answer-1").getByLabel("Forward calls").isChecked(), "the no-answer rule stays on");
  await axe(page, "account with three forwarding rules");
  await shot(page, "account-forwarding");
  // Busy through do-not-disturb (the number does not ring: a busy rule
  // applies at once), then offline; the terminal lists all three first.
  await page.getByRole("button", { name: "Turn on do-not-disturb" }).click();
  await page.waitForURL(/done=dnd/);
  await step("busy-and-offline-calls");
  check(true, "the busy rule and the offline rule are each followed by the next call; forward list shows the rules set on the web");
  await page.getByRole("button", { name: "Turn off do-not-disturb" }).click();
  await page.waitForURL(/done=dnd/);

  // Operator pages: sessions online, numbers, search.
  await step("make-admin");
  await page.goto(`${url}/admin`);
  check((await page.locator("#online").textContent()).includes("지우"), "the operator sees 지우 online");
  const allNumbers = await page.locator("#all-numbers").textContent();
  check(allNumbers.includes("busy → 3003") && allNumbers.includes("no-answer → 3003") && allNumbers.includes("unregistered → 2002"), `the operator sees the rules: ${allNumbers}`);
  await axe(page, "operator");
  await shot(page, "operator");
  await page.getByLabel("Search accounts").fill("CALL");
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForURL(/q=CALL/);
  const found = await page.locator("#accounts tbody").textContent();
  check(found.includes("caller") && !found.includes("jiwoo"), `the search finds only caller: ${found}`);

  // Korean.
  await page.goto(`${url}/lang/ko?back=/account`);
  check(await page.getByRole("heading", { name: "방해 금지" }).isVisible(), "the account page in Korean");
  check(await page.getByRole("button", { name: "방해 금지 켜기" }).isVisible(), "the do-not-disturb switch in Korean");
  check(await page.getByLabel("새 번호").isVisible(), "the new-number field in Korean");
  await axe(page, "account in Korean");
  await page.goto(`${url}/admin`);
  check(await page.getByRole("heading", { name: "접속 중인 세션" }).isVisible(), "the operator page in Korean");
  await axe(page, "operator in Korean");

  // Without JavaScript the forms work as plain HTML.
  const nojs = await browser.newContext({ ignoreHTTPSErrors: true, locale: "en-US", javaScriptEnabled: false });
  const pn = await nojs.newPage();
  await pn.goto(`${url}/login`);
  await pn.getByLabel("ID", { exact: true }).fill("jiwoo");
  await pn.getByLabel("Password", { exact: true }).fill(password);
  await pn.getByRole("button", { name: "Log in" }).click();
  await pn.waitForURL(/\/account/);
  await pn.getByRole("button", { name: "Turn on do-not-disturb" }).click();
  await pn.waitForURL(/done=dnd/);
  check((await pn.locator("#dnd-state-1").textContent()).includes("Do-not-disturb is on"), "do-not-disturb switched without JavaScript");
  await pn.getByLabel("New number").fill("지우3");
  await pn.getByRole("button", { name: "Add number" }).click();
  await pn.waitForURL(/done=number-added/);
  await pn.getByRole("button", { name: "Remove 지우3" }).click();
  await pn.waitForURL(/done=number-removed/);
  check(await pn.locator("#numbers .number").count() === 1, "a number added and removed without JavaScript");

  // Sign-up by invite code. The operator turns it on in the configuration
  // file (SIGHUP reads it again) and makes a code on the command line.
  await step("invite-mode");
  await page.goto(`${url}/lang/en?back=/admin`);
  check((await page.locator("#h-state + dl dd").first().textContent()).trim() === "invite", "the operator page shows sign-up by invite code");
  const code = await step("invite-code");
  check(/^[2-9A-Z]{4}(-[2-9A-Z]{4}){4}$/.test(code), `keyline-directory invite create printed a code: ${code}`);
  const hc = await browser.newContext({ ignoreHTTPSErrors: true, locale: "en-US" });
  const ph = await hc.newPage();
  await ph.goto(`${url}/signup`);
  check(await ph.getByText("Sign-up here needs an invite code").isVisible(), "the sign-up page says it needs an invite code");
  await axe(ph, "sign up by invite");
  // A made-up code: refused next to its field, nothing created.
  await signUp(ph, "dubu", password, "두부", "ABCD-EFGH-JKMN-PQRS-TUVW");
  check((await ph.locator("#invite-error").textContent()).includes("unknown or already used"), "a made-up invite code is refused next to its field");
  check(await ph.getByLabel("Invite code").getAttribute("aria-invalid") === "true", "the invite code field is marked invalid");
  check(await ph.getByLabel("ID", { exact: true }).inputValue() === "dubu", "what was typed stays");
  await axe(ph, "sign up with a wrong invite code");
  await step("not-created dubu 두부");
  check(true, "nothing was created with a made-up code");
  // The code printed: works, once.
  await signUp(ph, "hana", password, "하나", code);
  await ph.waitForURL(/\/setup/);
  check(true, "sign-up with the printed invite code works");
  const oc = await browser.newContext({ ignoreHTTPSErrors: true, locale: "en-US" });
  const po = await oc.newPage();
  await signUp(po, "dubu", password, "두부", code);
  check((await po.locator("#invite-error").textContent()).includes("unknown or already used"), "the same code again is refused as used");
  await step("not-created dubu 두부");
  check(true, "nothing was created with a used code");
  await page.goto(`${url}/admin`);
  check((await page.locator("section[aria-labelledby=h-invites] tbody").textContent()).includes("hana"), "the operator sees who used the code");

  // hana changes her ID; her terminal is logged in with the old one.
  await step("terminal-h");
  // A wrong password first: refused beside the password's field.
  const idForm = ph.locator("section[aria-labelledby=h-id]");
  await ph.goto(`${url}/account`);
  await idForm.getByLabel("New ID").fill("hana.kim");
  await idForm.getByLabel("Password", { exact: true }).fill("not my password");
  await idForm.getByRole("button", { name: "Change ID" }).click();
  await ph.waitForLoadState();
  check((await ph.locator("#id-password-error").textContent()).includes("The password is wrong"), "a wrong password refuses the change next to the password's field");
  check(await idForm.getByLabel("Password", { exact: true }).getAttribute("aria-invalid") === "true", "the password field is marked invalid, not the new ID's");
  check(await idForm.getByLabel("New ID").getAttribute("aria-invalid") === null, "the new ID's field is not marked");
  await axe(ph, "account with a refused ID change");
  await step("mail-for-h");
  await ph.goto(`${url}/account`);
  check((await ph.locator("li.mail").first().textContent()).includes("welcome hana"), "a message waits for hana");
  check(await ph.locator("#devices tbody tr").count() === 1, "the terminal logged in as hana is listed as a device");
  await idForm.getByLabel("New ID").fill("hana.kim");
  await idForm.getByLabel("Password", { exact: true }).fill(password);
  await idForm.getByRole("button", { name: "Change ID" }).click();
  await ph.waitForURL(/done=id/);
  check(await ph.getByText("Your ID was changed").isVisible(), "the ID is changed");
  const hanaNumbers = await ph.locator("#numbers .number").allTextContents();
  check(JSON.stringify(hanaNumbers) === JSON.stringify(["하나"]), `the number stays: ${hanaNumbers}`);
  check((await ph.locator("li.mail").first().textContent()).includes("welcome hana"), "the waiting message stays");
  check(await ph.getByRole("button", { name: "Log out" }).isVisible(), "still logged in on this browser");
  await axe(ph, "account with a changed ID");
  await step("old-id-refused hana.kim");
  check(true, "the terminal logged in as hana lost its session and cannot log in again");
  const nc = await browser.newContext({ ignoreHTTPSErrors: true, locale: "en-US" });
  const pnew = await nc.newPage();
  await logIn(pnew, "hana", password);
  check((await pnew.locator("#login-error").textContent()).includes("Wrong ID or password"), "the old ID cannot log in");
  await logIn(pnew, "hana.kim", password);
  check(pnew.url().endsWith("/account"), "the new ID logs in");
  await page.goto(`${url}/admin`);
  check((await page.locator("section[aria-labelledby=h-invites] tbody").textContent()).includes("hana.kim"), "the code's user follows the new ID");

  // hana deletes her account: the password again.
  const del = ph.locator("section[aria-labelledby=h-delete]");
  await del.getByLabel("Password", { exact: true }).fill("not my password");
  await del.getByRole("button", { name: "Delete account" }).click();
  await ph.waitForLoadState();
  check((await ph.locator("#delete-error").textContent()).includes("The password is wrong"), "a wrong password refuses the deletion with the message");
  check(await del.getByLabel("Password", { exact: true }).getAttribute("aria-invalid") === "true", "the password field is marked invalid");
  await axe(ph, "account with a refused deletion");
  await step("account-kept hana.kim");
  check(true, "the account is still there");
  await del.getByLabel("Password", { exact: true }).fill(password);
  await del.getByRole("button", { name: "Delete account" }).click();
  await ph.waitForLoadState();
  check(await ph.getByText("Your account was deleted.").isVisible(), "the account is deleted");
  check(await ph.getByRole("button", { name: "Log out" }).count() === 0 && await ph.getByRole("link", { name: "Log in" }).first().isVisible(), "logged out");
  await axe(ph, "account deleted");
  await ph.goto(`${url}/account`);
  check(ph.url().endsWith("/login"), "the account page asks to log in");
  await pnew.goto(`${url}/account`);
  check(pnew.url().endsWith("/login"), "the other browser's session ended too");
  await logIn(ph, "hana.kim", password);
  check((await ph.locator("#login-error").textContent()).includes("Wrong ID or password"), "the deleted ID cannot log in");
  await step("account-gone hana.kim 하나");
  check(true, "the account, its mail and its binding are gone");
  // The number is held back: the sign-up page's availability check says so.
  await ph.goto(`${url}/signup`);
  await ph.getByLabel("Number", { exact: true }).pressSequentially("하나");
  await ph.waitForFunction(() => document.getElementById("number-status").textContent.includes("deleted account"));
  const held = await ph.locator("#number-status").textContent();
  check(held.includes("하나") && held.includes("cannot be taken yet"), `the number shows as not available: ${held}`);
  await axe(ph, "sign up with a held number");
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  failed = true;
} finally {
  await browser.close();
  lines.close();
}
process.exit(failed ? 1 : 0);
