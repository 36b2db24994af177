// The directory's web site in headless Chromium, driven by
// tests/tests/directory_web.rs. Steps that need terminals to do something
// are asked of the Rust test on stdout ("STEP name [arg]") and answered on
// stdin ("OK [value]"). Any failed check exits non-zero.
//
// Environment: SITE_URL, DIR_FP, PASSWORD, DOWNLOADS (a directory), SHOTS
// (a directory for screenshots, optional).

import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const url = process.env.SITE_URL;
const fp = process.env.DIR_FP;
const password = process.env.PASSWORD;
const newPassword = process.env.NEW_PASSWORD;
const downloads = process.env.DOWNLOADS;
const shots = process.env.SHOTS;
mkdirSync(downloads, { recursive: true });
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

async function signUp(page, id, pw, repeat, number) {
  await page.goto(`${url}/signup`);
  await page.getByLabel("ID", { exact: true }).fill(id);
  await page.getByLabel("Password", { exact: true }).fill(pw);
  await page.getByLabel("Repeat password", { exact: true }).fill(repeat);
  await page.getByLabel("Number", { exact: true }).fill(number);
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

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox", "--autoplay-policy=no-user-gesture-required"] });
let failed = false;
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true, locale: "en-US" });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.error(`page console: ${m.text()}`); });

  // Home and sign-up, with availability shown as the person types.
  await page.goto(url);
  check(await page.getByRole("link", { name: "Sign up" }).first().isVisible(), "home links to Sign up");
  await axe(page, "home");
  await page.goto(`${url}/signup`);
  await axe(page, "sign up");
  await page.getByLabel("Number", { exact: true }).pressSequentially("김민준");
  await page.waitForFunction(() => document.getElementById("number-status").textContent.includes("free"));
  check(true, "the number's availability shows while typing");
  await page.getByLabel("ID", { exact: true }).fill("minjun");
  await page.getByLabel("Password", { exact: true }).fill(password);
  await page.getByLabel("Repeat password", { exact: true }).fill(password);
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.waitForURL(/\/setup/);
  check((await page.locator("#fingerprint").textContent()).trim() === fp, "the set-up page shows the directory's fingerprint");
  const command = await page.locator("#command").textContent();
  check(command.includes(`--directory-fp ${fp} --account minjun --number 김민준`), `the command names this account: ${command}`);
  await axe(page, "set up");
  await shot(page, "setup");
  const [dl] = await Promise.all([page.waitForEvent("download"), page.locator("#config-download").click()]);
  const file = `${downloads}/keyline-terminal.toml`;
  await dl.saveAs(file);
  check(readFileSync(file, "utf8").includes('account = "minjun"'), "the settings file is for minjun");
  await step(`terminal-a ${file}`);
  check(true, "a terminal started from the settings file registers");
  await step("ring");
  check(true, "dialling 김민준 rings that terminal");
  await step("answered-call");
  check(true, "a call answered and hung up after a second");

  // Call history: the answered call with its length, newest first, and
  // the one before it, missed. (The directory writes the history off its
  // routing task: the page may be a moment behind the hang-up.)
  let rows = [];
  for (let i = 0; i < 25 && rows.length < 2; i++) {
    await page.goto(`${url}/account/calls`);
    rows = await page.locator("#calls tbody tr").allTextContents();
    if (rows.length < 2) await page.waitForTimeout(200);
  }
  const cells = async (n) => (await page.locator(`#calls tbody tr:nth-child(${n}) td`).allTextContents()).map((c) => c.trim());
  const answered = await cells(1);
  check(answered[1] === "In" && answered[2] === "2002" && answered[3] === "Answered" && /^0:0[1-3]$/.test(answered[4]), `the answered call with its length: ${answered}`);
  const missed = await cells(2);
  check(missed[1] === "In" && missed[2] === "2002" && missed[3] === "Missed" && missed[4] === "-", `the missed call: ${missed}`);
  check(rows.length === 2, `only this account's calls: ${rows.length}`);
  await axe(page, "call history");
  await shot(page, "calls");
  await page.goto(`${url}/lang/ko?back=/account/calls`);
  check((await cells(1))[3] === "통화함" && (await cells(2))[3] === "부재중", "the call history in Korean");
  await page.goto(`${url}/lang/en?back=/account/calls`);

  // Account: the device, forwarding followed by the next call.
  await page.goto(`${url}/account`);
  check(await page.locator("#devices tbody tr").count() === 1, "the account lists the terminal as a device");
  await axe(page, "account");
  await shot(page, "account");
  const always = page.locator("#fwd-always-1");
  await always.getByLabel("Forward calls").check();
  await always.getByLabel("Forward to").fill("3003");
  await page.getByRole("button", { name: "Save Forwarding of 김민준" }).click();
  await page.waitForURL(/done=forward/);
  check(await page.getByText("Forwarding saved.").isVisible(), "forwarding saved");
  await step("forwarded");
  check(true, "the next call follows the rule set on the web");
  await page.locator("#fwd-always-1").getByLabel("Forward calls").uncheck();
  await page.getByRole("button", { name: "Save Forwarding of 김민준" }).click();
  await page.waitForURL(/done=forward/);

  // A form without its CSRF token is refused.
  const noToken = await context.request.post(`${url}/account/forward`, { form: { number: "김민준", "on-always": "1", "to-always": "2002" } });
  check(noToken.status() === 403, `a form without its CSRF token gets 403 (got ${noToken.status()})`);

  // Sign out this device: the binding goes at once.
  await page.getByRole("button", { name: "Sign out this device" }).click();
  await page.waitForURL(/done=device/);
  await step("unbound");
  check(true, "Sign out this device dropped the binding");
  await step("bound");

  // A password changed on the web is refused at the terminal's next login.
  await page.goto(`${url}/account`);
  await page.getByLabel("Old password").fill(password);
  await page.getByLabel("New password").fill(newPassword);
  await page.getByRole("button", { name: "Change password" }).click();
  await page.waitForURL(/done=password/);
  await step("refused");
  check(true, "the terminal's next login with the old password is refused");

  // Mail left while away: listed, another account cannot open it,
  // deleted on the web.
  await step("leave-mail");
  await page.goto(`${url}/account`);
  const item = page.locator("li.mail").first();
  check((await item.textContent()).includes("hello from b"), "the message is in the inbox");
  const mailId = (await item.getAttribute("id")).replace("mail-", "");
  await axe(page, "account with mail");

  // Another person: bad input on sign-up, then markup in a number.
  const other = await browser.newContext({ ignoreHTTPSErrors: true, locale: "en-US" });
  const p2 = await other.newPage();
  p2.on("console", (m) => { if (m.type() === "error") console.error(`page console: ${m.text()}`); });
  await signUp(p2, "someone", "password one", "password one", "김 민준");
  check((await p2.locator("#number-error").textContent()).includes("is taken"), "a taken number is refused next to its field");
  await axe(p2, "sign up with errors");
  await signUp(p2, "someone", "password one", "password two", "5005");
  check((await p2.locator("#repeat-error").textContent()).includes("do not match"), "mismatched passwords are refused");
  await p2.goto(`${url}/signup`);
  await p2.evaluate(() => document.querySelectorAll("input[maxlength]").forEach((e) => e.removeAttribute("maxlength")));
  await p2.getByLabel("ID", { exact: true }).fill("x".repeat(300));
  await p2.getByLabel("Password", { exact: true }).fill("p".repeat(2000));
  await p2.getByLabel("Repeat password", { exact: true }).fill("p".repeat(2000));
  await p2.getByLabel("Number", { exact: true }).fill("9".repeat(3000));
  await p2.getByRole("button", { name: "Sign up" }).click();
  await p2.waitForLoadState();
  check((await p2.locator("#id-error").textContent()).includes("too long"), "an overlong ID is refused");
  check((await p2.locator("#password-error").textContent()).includes("too long"), "an overlong password is refused");
  check((await p2.locator("#number-error").textContent()).includes("too long"), "an overlong number is refused");
  await signUp(p2, "scripty", "password one", "password one", "<script>window.pwned=1</script>");
  await p2.waitForURL(/\/setup/);
  await p2.goto(`${url}/account`);
  check((await p2.locator("#numbers").textContent()).includes("<script>"), "markup in a number is shown as text");
  check(await p2.evaluate(() => window.pwned === undefined), "markup in a number never runs");
  const theirs = await p2.goto(`${url}/account/mail/${mailId}`);
  check(theirs.status() === 404, `another account's message is 404 (got ${theirs.status()})`);
  await p2.goto(`${url}/no-such-page`);
  await axe(p2, "not found");

  // minjun deletes the message on the web: gone from the store.
  const mine = await page.goto(`${url}/account/mail/${mailId}`);
  check(mine.status() === 200, "the owner can open the message");
  await page.goto(`${url}/account`);
  await page.locator(`#mail-${mailId}`).getByRole("button", { name: "Delete" }).click();
  await page.waitForURL(/done=mail/);
  await step("mail-gone");
  check(true, "a message deleted on the web is gone from the store");

  // Voice mail left while away plays in the page; one deleted on the web
  // never reaches the terminal.
  await step("leave-voice");
  await page.goto(`${url}/account`);
  const voices = page.locator("li.mail audio");
  check(await voices.count() === 2, "both voice messages are in the inbox");
  const first = page.locator("li.mail", { has: page.locator("audio") }).first();
  const voiceId = (await first.getAttribute("id")).replace("mail-", "");
  const played = await page.evaluate(async (id) => {
    const a = document.querySelector(`#mail-${id} audio`);
    if (a.readyState < 1) await new Promise((r) => a.addEventListener("loadedmetadata", r, { once: true }));
    const duration = a.duration;
    const ended = new Promise((r, j) => { a.addEventListener("ended", r, { once: true }); setTimeout(() => j(new Error("the audio did not reach its end")), 20000); });
    await a.play();
    await ended;
    return { duration, ended: a.ended, at: a.currentTime };
  }, voiceId);
  check(played.ended && played.duration > 0 && played.at > 0, `the voice message plays to its end in the page (${JSON.stringify(played)})`);
  await axe(page, "account with voice mail");
  await page.locator(`#mail-${voiceId}`).getByRole("button", { name: "Delete" }).click();
  await page.waitForURL(/done=mail/);
  check(await page.locator(`#mail-${voiceId}`).count() === 0, "the deleted voice message is gone from the page");
  await step("voice-delivered");
  check(true, "only the voice message kept reaches the terminal");

  // 20 wrong passwords: locked out with the message; the right one works after the wait.
  const third = await browser.newContext({ ignoreHTTPSErrors: true, locale: "en-US" });
  const p3 = await third.newPage();
  await logIn(p3, "minjun", "wrong password");
  check((await p3.locator("#login-error").textContent()).includes("Wrong ID or password"), "a wrong password is refused");
  await axe(p3, "log in with an error");
  for (let i = 1; i < 20; i++) await logIn(p3, "minjun", `wrong password ${i}`);
  const locked = await p3.locator("#login-error").textContent();
  check(locked.includes("Try again in"), `20 wrong passwords lock out: ${locked}`);
  await logIn(p3, "minjun", newPassword);
  check((await p3.locator("#login-error").textContent()).includes("Try again in"), "while locked out even the right password waits");
  const wait = Number((/in (\d+) s/.exec(locked) || [0, 3])[1]);
  await new Promise((r) => setTimeout(r, (wait + 1) * 1000));
  await logIn(p3, "minjun", newPassword);
  check(p3.url().endsWith("/account"), "the right password works after the wait");

  // Korean pages for a Korean browser.
  const ko = await browser.newContext({ ignoreHTTPSErrors: true, locale: "ko-KR" });
  const pk = await ko.newPage();
  await pk.goto(`${url}/signup`);
  check(await pk.getByRole("button", { name: "가입하기" }).isVisible(), "the sign-up page in Korean");
  await axe(pk, "sign up in Korean");
} catch (e) {
  failed = true;
  console.error(`FAILED: ${e.stack || e}`);
} finally {
  await browser.close();
  lines.close();
}
process.exit(failed ? 1 : 0);
