// The directory's account and operator pages in headless Chromium, driven
// by tests/tests/directory_web.rs (the_account_and_operator_pages_in_a_
// browser): numbers added and removed, do-not-disturb, forwarding when not
// answered, then busy, no-answer and offline rules at once (each followed
// by the next call, and listed by the terminal's `forward list`), the
// operator's lists and search, in English and Korean.
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
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  failed = true;
} finally {
  await browser.close();
  lines.close();
}
process.exit(failed ? 1 : 0);
