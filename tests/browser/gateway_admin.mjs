// The gateway's admin site in headless Chromium, driven by
// tests/tests/gateway_admin_browser.rs. Steps that need the office to do
// something are asked of the Rust test on stdout ("STEP name") and
// answered on stdin ("OK [value]"). Any failed check exits non-zero.
//
// Environment: ADMIN_URL (the gateway's LAN address: the test runs this
// script in a desk namespace on the office LAN), ADMIN_PASSWORD, GW_BIN,
// GW_STATE (the CLI reaches the gateway by its control socket, a file),
// SHOTS (a directory for screenshots, optional).

import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { readFileSync, mkdirSync, existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const url = process.env.ADMIN_URL;
const password = process.env.ADMIN_PASSWORD;
const shots = process.env.SHOTS;
if (shots) mkdirSync(shots, { recursive: true });

const lines = createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (l) => { const w = waiting.shift(); if (w) w(l); });
/** Ask the Rust side to do `name`; its answer after "OK". */
function step(name) {
  return new Promise((resolve, reject) => {
    waiting.push((l) => l.startsWith("OK") ? resolve(l.slice(2).trim()) : reject(new Error(`${name}: ${l}`)));
    process.stdout.write(`STEP ${name}\n`);
  });
}

/** A mono 16-bit 48 kHz WAV of a sine, `secs` long. */
function wav(secs, hz) {
  const n = Math.round(secs * 48000);
  const b = Buffer.alloc(44 + n * 2);
  b.write("RIFF", 0); b.writeUInt32LE(36 + n * 2, 4); b.write("WAVE", 8);
  b.write("fmt ", 12); b.writeUInt32LE(16, 16); b.writeUInt16LE(1, 20); b.writeUInt16LE(1, 22);
  b.writeUInt32LE(48000, 24); b.writeUInt32LE(96000, 28); b.writeUInt16LE(2, 32); b.writeUInt16LE(16, 34);
  b.write("data", 36); b.writeUInt32LE(n * 2, 40);
  for (let i = 0; i < n; i++) b.writeInt16LE(Math.round(8000 * Math.sin(2 * Math.PI * hz * i / 48000)), 44 + i * 2);
  return b;
}

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.error(`ok: ${what}`);
}

async function axe(page, name) {
  // Evaluated by the test, not added as a script (the page's CSP allows
  // no inline script).
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => await window.axe.run(document));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(bad.length === 0, `axe on ${name}: no serious violations ${JSON.stringify(bad.map((v) => [v.id, v.nodes.map((n) => n.target)]))}`);
}

async function shot(page, name) {
  if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
let failed = false;
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") console.error(`page console: ${m.text()}`); });

  // Log in.
  let r = await page.goto(`${url}/login`);
  check(r.status() === 200, "the login page answers");
  await axe(page, "login");
  await shot(page, "admin-login");
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(`${url}/`);
  check((await page.textContent("h1")) === "Dashboard", "logged in to the dashboard");
  await axe(page, "dashboard");

  // A new station's pending enrolment appears without a reload; Approve
  // lets it register.
  await page.goto(`${url}/stations`);
  await axe(page, "stations");
  await page.evaluate(() => { window.__sameLoad = true; });
  const code = await step("start-station");
  const row = page.locator(`#pending tr[data-code="${code}"]`);
  await row.waitFor({ timeout: 10000 });
  check(await page.evaluate(() => window.__sameLoad === true), `pending code ${code} appeared without a reload`);
  await shot(page, "admin-stations");
  await row.getByRole("button", { name: "Approve" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  const notice = await page.textContent("p.notice.good");
  check(/Approved as extension \d+/.test(notice), `approved: ${notice}`);
  const ext = notice.match(/extension (\d+)/)[1];
  await step(`registered ${ext}`);
  await page.locator(`#enrolled tr[data-ext="${ext}"] .badge.ok`).waitFor({ timeout: 5000 });
  check(true, `extension ${ext} shows online without a reload`);

  // A call between two stations appears on the dashboard within 1 s, and
  // Hang up ends it.
  await page.goto(`${url}/`);
  await page.evaluate(() => { window.__sameLoad = true; });
  const call = page.locator("#calls tr[data-call]");
  check(await call.count() === 0, "no call on the dashboard yet");
  // The step returns once 201's dial rings; the clock starts there.
  await step(`call ${ext}`);
  const t0 = Date.now();
  await call.first().waitFor({ timeout: 1000 });
  check(Date.now() - t0 <= 1000, `the call appeared on the dashboard ${Date.now() - t0} ms after the dial rang`);
  await step("answer");
  await page.waitForFunction(() => {
    const c = document.querySelector("#calls tr[data-call]");
    return c && c.textContent.includes("answered");
  }, null, { timeout: 3000 });
  check(await page.evaluate(() => window.__sameLoad === true), "without a reload");
  // The call is relayed: its packets a second from each end show, and
  // follow the stream (voice is 50 a second each way).
  await page.waitForFunction(() => {
    const td = document.querySelector("#calls tr[data-call] td.pps");
    const m = td && td.textContent.trim().match(/^(\d+) \/ (\d+)$/);
    return m && Number(m[1]) >= 30 && Number(m[2]) >= 30;
  }, null, { timeout: 5000 });
  check(true, `packets a second through the forwarder: ${(await page.textContent("#calls td.pps")).trim()}`);
  await shot(page, "admin-dashboard");
  await axe(page, "dashboard with a call");
  await call.first().getByRole("button", { name: "Hang up" }).click();
  await page.locator("#calls tr[data-call]").waitFor({ state: "detached", timeout: 5000 });
  await step("hung-up");
  check(true, "Hang up ended the call");

  // Call records: the export matches `keyline-gatewayd cdr --json`.
  await page.goto(`${url}/cdr`);
  await axe(page, "call records");
  await shot(page, "admin-cdr");
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("link", { name: "Export CSV" }).click(),
  ]);
  const csv = readFileSync(await download.path(), "utf8");
  const rows = csv.trim().split("\r\n").map((l) => l.split(","));
  check(rows[0].join(",") === "Record,From,Number,Started,Duration,Outcome", "the CSV's header");
  const cdr = JSON.parse(execFileSync(process.env.GW_BIN, ["--state", process.env.GW_STATE, "cdr", "--json"])).cdr;
  check(rows.length - 1 === cdr.length && cdr.length >= 1, `the CSV has every record (${cdr.length})`);
  for (let i = 0; i < cdr.length; i++) {
    const [id, from, number, started, duration, outcome] = rows[i + 1];
    const c = cdr[i];
    const talk = c.answer_ms == null ? 0 : Math.floor(Math.max(0, c.end_ms - c.answer_ms) / 1000);
    check(Number(id) === c.id && from === c.caller && number === c.callee && outcome === c.outcome
      && Date.parse(started) === Math.floor(c.start_ms / 1000) * 1000 && Number(duration) === talk,
      `CSV row ${i + 1} matches record ${c.id} (${c.caller} -> ${c.callee} ${c.outcome})`);
  }
  // One call's record: its own page, from the list's link.
  const first = cdr[0];
  await page.locator(`a[href="/cdr/${first.id}"]`).click();
  await page.waitForURL(`${url}/cdr/${first.id}`);
  check((await page.textContent("h1")) === "Call record", "the one-call page opens");
  const one = await page.textContent("dl");
  check(one.includes(first.caller) && one.includes(first.callee) && one.includes(first.outcome),
    `the one-call page shows record ${first.id} (${first.caller} -> ${first.callee} ${first.outcome})`);
  await axe(page, "one call record");
  // Searching by outcome and by dates: the page lists what the CLI finds.
  const today = new Date().toISOString().slice(0, 10);
  await page.goto(`${url}/cdr`);
  await page.getByLabel("Outcome").selectOption(first.outcome);
  await page.getByLabel("From (date)", { exact: true }).fill(today);
  await page.getByLabel("To (date)", { exact: true }).fill(today);
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForURL(/outcome=/);
  const want = cdr.filter((c) => c.outcome === first.outcome).map((c) => String(c.id)).sort();
  let shown = await page.locator("#cdr tbody tr td:first-child").allTextContents();
  check(JSON.stringify(shown.map((x) => x.trim()).sort()) === JSON.stringify(want),
    `search by outcome ${first.outcome} and today's date lists ${JSON.stringify(want)} (${JSON.stringify(shown)})`);
  await page.getByLabel("From (date)", { exact: true }).fill("2001-01-01");
  await page.getByLabel("To (date)", { exact: true }).fill("2001-01-02");
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForURL(/from=2001/);
  shown = await page.locator("#cdr tbody tr td:first-child").allTextContents();
  check(shown.length === 0, `a date range without calls lists none (${JSON.stringify(shown)})`);
  await page.goto(`${url}/calls`);
  await axe(page, "live calls");

  // The dial plan: a ring group with an unknown member is refused next
  // to its field and nothing is saved; a good one is what the CLI shows.
  await page.goto(`${url}/dialplan`);
  await axe(page, "dial plan");
  await page.getByLabel("Members, in order").fill("202, 299");
  await page.getByLabel("How they ring").selectOption("hunt");
  await page.locator("#rg-h").locator("xpath=..").getByRole("button", { name: "Save" }).click();
  await page.locator("#rg-error").waitFor({ timeout: 5000 });
  check((await page.textContent("#rg-error")).includes("299 is not an extension here"), "an unknown member is refused next to its field");
  let rg = JSON.parse(execFileSync(process.env.GW_BIN, ["--state", process.env.GW_STATE, "ring-group", "show", "--json"]));
  check(rg.source === "config", "nothing was saved");
  await page.getByLabel("Members, in order").fill(`${ext}, 201`);
  await page.getByLabel("How they ring").selectOption("hunt");
  await page.getByLabel("Seconds each (in turn)").fill("2");
  await page.locator("#rg-h").locator("xpath=..").getByRole("button", { name: "Save" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  rg = JSON.parse(execFileSync(process.env.GW_BIN, ["--state", process.env.GW_STATE, "ring-group", "show", "--json"]));
  check(rg.mode === "hunt" && rg.members.join(",") === `${ext},201` && rg.step_secs === 2, `the hunt group is what the CLI shows (${JSON.stringify(rg)})`);
  await shot(page, "admin-dialplan");
  check((await page.textContent("#ext-range")).trim() === "201-499", "the extension range is shown");
  check((await page.textContent("#office-mailbox")).includes(`extension ${ext}`), "the office mailbox is the ring group's first member");
  // The office mailbox, set with reception: an unknown extension is
  // refused; 201 is taken and is what status shows.
  await page.getByLabel("Office mailbox (unanswered calls)").fill("299");
  await page.locator("#rg-h").locator("xpath=..").getByRole("button", { name: "Save" }).click();
  await page.locator("#rg-error").waitFor({ timeout: 5000 });
  check((await page.textContent("#rg-error")).includes("office mailbox: 299 is not an extension here"), "an unknown office mailbox is refused next to the form");
  await page.getByLabel("Office mailbox (unanswered calls)").fill("201");
  await page.locator("#rg-h").locator("xpath=..").getByRole("button", { name: "Save" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  check((await page.textContent("#office-mailbox")).includes("extension 201 (set here"), "the office mailbox set here is shown");
  rg = JSON.parse(execFileSync(process.env.GW_BIN, ["--state", process.env.GW_STATE, "status", "--json"])).ring_group;
  check(rg.office_mailbox === "201" && rg.office_mailbox_source === "ring-group" && rg.members.join(",") === `${ext},201`, `status shows the office mailbox (${JSON.stringify(rg)})`);
  // A second ring group, with an extension of its own: a bad member is
  // refused next to its field and nothing is saved; a good one is listed
  // and is what the CLI lists; one added with the CLI appears without a
  // reload, and Remove takes it away.
  const cli = (...args) => JSON.parse(execFileSync(process.env.GW_BIN, ["--state", process.env.GW_STATE, ...args]));
  const grp = page.locator("#group-h").locator("xpath=..");
  await page.getByLabel("Group extension").fill("450");
  await page.getByLabel("Group name").fill("Sales");
  await page.getByLabel("Who rings, in order").fill(`${ext}, 299`);
  await grp.getByRole("button", { name: "Save" }).click();
  await page.locator("#g-members-error").waitFor({ timeout: 5000 });
  check((await page.textContent("#g-members-error")).includes("299 is not an extension here"), "an unknown group member is refused next to its field");
  check((await page.getAttribute("#g-members", "aria-invalid")) === "true", "the members field is marked");
  check((await page.inputValue("#g-members")) === `${ext}, 299` && (await page.inputValue("#g-name")) === "Sales", "what was typed stays");
  check(cli("ring-group", "list", "--json").ring_groups.length === 0, "the refused group was not saved");
  await axe(page, "dial plan with a refused ring group");
  await page.getByLabel("Who rings, in order").fill(`${ext}, 201`);
  await page.getByLabel("How the group rings").selectOption("hunt");
  await page.getByLabel("Seconds per member (in turn)").fill("3");
  await grp.getByRole("button", { name: "Save" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  check((await page.textContent("p.notice.good")).includes("Ring group added."), "the group is added");
  const row450 = page.locator('#ring-groups tr[data-ext="450"]');
  check((await row450.textContent()).includes("Sales") && (await row450.textContent()).includes(`${ext}, 201`), `the group is listed (${await row450.textContent()})`);
  let groups = cli("ring-group", "list", "--json").ring_groups;
  check(groups.length === 1 && groups[0].ext === "450" && groups[0].name === "Sales" && groups[0].mode === "hunt"
    && groups[0].step_secs === 3 && groups[0].members.join(",") === `${ext},201`, `the group is what the CLI lists (${JSON.stringify(groups)})`);
  check(cli("status", "--json").ring_groups.some((g) => g.ext === "450"), "status shows the group at once");
  await shot(page, "admin-dialplan-groups");
  await page.evaluate(() => { window.__dpLoad = true; });
  execFileSync(process.env.GW_BIN, ["--state", process.env.GW_STATE, "ring-group", "add", "460", "--name", "Support", "201"]);
  await page.locator('#ring-groups tr[data-ext="460"]').waitFor({ timeout: 5000 });
  check(await page.evaluate(() => window.__dpLoad === true), "a group added with the CLI appears without a reload");
  await page.locator('#ring-groups tr[data-ext="460"]').getByRole("button", { name: "Remove 460" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  check((await page.locator('#ring-groups tr[data-ext="460"]').count()) === 0, "Remove takes the group away");
  check(cli("ring-group", "list", "--json").ring_groups.length === 1, "the CLI lists one group again");
  // The extension range: one that would leave 201 outside is refused
  // next to its fields, naming it, and nothing is saved.
  await page.getByLabel("Lowest extension").fill("300");
  await page.getByLabel("Highest extension").fill("399");
  await page.locator("#ex-h").locator("xpath=..").getByRole("button", { name: "Save" }).click();
  await page.locator("#range-error").waitFor({ timeout: 5000 });
  check((await page.textContent("#range-error")).includes("station 201"), `a range that leaves 201 out is refused (${await page.textContent("#range-error")})`);
  check(cli("status", "--json").extension_range_source === "config", "nothing was saved");
  check((await page.textContent("#ext-range-source")).includes("configuration file"), "the page says where the range comes from");

  // A speed dial to an invalid number is refused next to its field and
  // nothing is saved; a good one is what the CLI lists.
  const sd = page.locator("#sd-h").locator("xpath=..");
  await page.locator("#sd-code").fill("*3");
  await page.locator("#sd-number").fill("12+34");
  await sd.getByRole("button", { name: "Save" }).click();
  await page.locator("#sd-error").waitFor({ timeout: 5000 });
  check((await page.getAttribute("#sd-number", "aria-describedby")) === "sd-error", "the error is tied to the Number field");
  let sds = JSON.parse(execFileSync(process.env.GW_BIN, ["--state", process.env.GW_STATE, "speed-dial", "list", "--json"]));
  check(!JSON.stringify(sds).includes("*3"), `the invalid speed dial was not saved (${JSON.stringify(sds)})`);
  await axe(page, "dial plan with a refused field");
  await page.locator("#sd-code").fill("*3");
  await page.locator("#sd-number").fill("0317001000");
  await sd.getByRole("button", { name: "Save" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  sds = JSON.parse(execFileSync(process.env.GW_BIN, ["--state", process.env.GW_STATE, "speed-dial", "list", "--json"]));
  check(JSON.stringify(sds).includes("0317001000"), `the speed dial is what the CLI lists (${JSON.stringify(sds)})`);

  // A call to the office number hunts: the new station rings alone, then
  // 201 (the Rust side checks the stations); the dashboard follows the
  // ringing member without a reload.
  await page.goto(`${url}/`);
  await page.evaluate(() => {
    window.__ringing = [];
    const note = () => {
      for (const tr of document.querySelectorAll("#calls tr[data-call]")) {
        const to = tr.children[2].textContent.trim().split(" ")[0];
        if (window.__ringing[window.__ringing.length - 1] !== to) window.__ringing.push(to);
      }
    };
    new MutationObserver(note).observe(document.getElementById("live"), { childList: true, subtree: true });
  });
  await step(`hunt-call ${ext}`);
  const rang = await page.evaluate(() => window.__ringing);
  check(rang.indexOf(ext) >= 0 && rang.indexOf("201") > rang.indexOf(ext),
    `the dashboard showed the hunt ringing ${ext}, then 201 (${JSON.stringify(rang)})`);

  // A voicemail left for the new station plays in the page, and Delete
  // removes it.
  await step(`voicemail ${ext}`);
  await page.goto(`${url}/voicemail`);
  const vm = page.locator("#voicemail tbody tr");
  await vm.first().waitFor({ timeout: 10000 });
  await axe(page, "voicemail");
  await shot(page, "admin-voicemail");
  const played = await page.evaluate(async () => {
    const a = document.querySelector("#voicemail audio");
    a.muted = true;
    a.preload = "auto";
    await a.play();
    await new Promise((r) => setTimeout(r, 700));
    return { t: a.currentTime, d: a.duration, err: a.error && a.error.message };
  });
  check(played.t > 0.2 && !played.err, `the voicemail plays in the page (${JSON.stringify(played)})`);
  const id = await vm.first().getAttribute("data-id");
  await vm.first().getByRole("button", { name: `Delete ${id}` }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  check(await page.locator(`#voicemail tr[data-id="${id}"]`).count() === 0, `voicemail ${id} deleted`);

  // Greetings: a file that is not audio gets a clear error; a WAV becomes
  // the greeting, stored as Ogg Opus.
  await page.setInputFiles("#greeting", { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("not a greeting") });
  await page.locator("#greeting-h").locator("xpath=..").getByRole("button", { name: "Save" }).click();
  await page.locator("p.notice.bad").waitFor({ timeout: 5000 });
  check((await page.textContent("p.notice.bad")).includes("not a WAV or Ogg Opus file"), "a non-audio greeting is refused clearly");
  check(!existsSync(`${process.env.GW_STATE}/voicemail/greeting.opus`), "nothing was stored");
  await page.setInputFiles("#greeting", { name: "hello.wav", mimeType: "audio/wav", buffer: wav(1.5, 440) });
  await page.locator("#greeting-h").locator("xpath=..").getByRole("button", { name: "Save" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  check((await page.textContent("p.notice.good")).includes("1.5 s"), "the WAV greeting is taken");
  const stored = readFileSync(`${process.env.GW_STATE}/voicemail/greeting.opus`);
  check(stored.subarray(0, 4).toString() === "OggS" && stored.includes(Buffer.from("OpusHead")), "stored as Ogg Opus");
  // An Ogg Opus file is taken as it is.
  await page.setInputFiles("#greeting", { name: "hello.ogg", mimeType: "audio/ogg", buffer: stored });
  await page.locator("#greeting-h").locator("xpath=..").getByRole("button", { name: "Save" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  check((await page.textContent("p.notice.good")).includes("1.5 s"), `the Ogg greeting is taken (${await page.textContent("p.notice.good")})`);

  // Forwarding: a bad target is refused next to its field; do not disturb
  // for 201 is saved (after the calls above, which 201 answers).
  await page.goto(`${url}/dialplan`);
  await page.getByLabel("Forward when busy for 201").fill("12+34");
  await page.locator('tr[data-ext="201"]').getByRole("button", { name: "Save" }).click();
  await page.locator("#fb-201-error").waitFor({ timeout: 5000 });
  check((await page.inputValue("#fb-201")) === "12+34", "what was typed stays in the refused field");
  await page.getByLabel("Forward when busy for 201").fill("");
  await page.getByLabel("Do not disturb for 201").check();
  await page.locator('tr[data-ext="201"]').getByRole("button", { name: "Save" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  check(await page.isChecked("#dnd-201"), "do not disturb for 201 saved");

  // A form without its CSRF token is refused.
  const status = await page.evaluate(async () => {
    const r = await fetch("/stations/revoke", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: "ext=201",
    });
    return r.status;
  });
  check(status === 403, `a form without its CSRF token gets ${status}`);
  await step("still-enrolled 201");

  // Change extension: one outside the range is refused next to its
  // field; then the new station becomes 250, and Revoke takes it away.
  await page.goto(`${url}/stations`);
  await page.getByLabel(`New extension for ${ext}`).fill("999");
  await page.locator(`#enrolled tr[data-ext="${ext}"]`).getByRole("button", { name: "Save" }).click();
  await page.locator(`#new-${ext}-error`).waitFor({ timeout: 5000 });
  check((await page.textContent(`#new-${ext}-error`)).includes("outside the range 201-499"), "an extension outside the range is refused next to its field");
  check((await page.locator("p.notice.bad").count()) === 0, "not as a page notice");
  await axe(page, "stations with a refused field");
  await step(`still-enrolled ${ext}`);
  await page.getByLabel(`New extension for ${ext}`).fill("250");
  await page.locator(`#enrolled tr[data-ext="${ext}"]`).getByRole("button", { name: "Save" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  await step("registered 250");
  await page.locator('#enrolled tr[data-ext="250"]').waitFor({ timeout: 5000 });
  await page.locator('#enrolled tr[data-ext="250"]').getByRole("button", { name: "Revoke" }).click();
  await page.locator("p.notice.good").waitFor({ timeout: 5000 });
  check((await page.textContent("p.notice.good")).includes("250 was revoked"), "Revoke says so");
  await step("revoked 250");
  // The station followed its renumbering in the ring groups, and revoking
  // it took it out of them: nobody else gets its calls if 250 is reused.
  {
    const after = JSON.parse(execFileSync(process.env.GW_BIN, ["--state", process.env.GW_STATE, "status", "--json"]));
    check(after.ring_group.members.join(",") === "201", `the revoked station left the reception group (${JSON.stringify(after.ring_group)})`);
    check(after.ring_groups.every((g) => !g.members.includes("250") && !g.members.includes(ext)), `and every other group (${JSON.stringify(after.ring_groups)})`);
  }

  // Wrong passwords lock the address out.
  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForURL(`${url}/login`);
  let last = 0;
  for (let i = 0; i < 5; i++) {
    await page.getByLabel("Password").fill(`wrong ${i}`);
    const [resp] = await Promise.all([
      page.waitForResponse((x) => x.url() === `${url}/login` && x.request().method() === "POST"),
      page.getByRole("button", { name: "Log in" }).click(),
    ]);
    last = resp.status();
  }
  check(last === 429, `the fifth wrong password locks out (${last})`);
  check((await page.textContent("p.notice.bad")).includes("locked out"), "the page says locked out");
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForLoadState();
  check((await page.textContent("p.notice.bad")).includes("locked out"), "even the right password waits");

  // A login POST without the login form's token is refused.
  const bare = await page.evaluate(async (pw) => {
    const r = await fetch("/login", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: `password=${encodeURIComponent(pw)}`,
    });
    return r.status;
  }, password);
  check(bare === 403, `a login without its CSRF token gets ${bare}`);

  // What was changed here survives a restart of the gateway.
  await step("restart");
  await page.goto(`${url}/login`);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(`${url}/`);
  await page.goto(`${url}/dialplan`);
  check((await page.inputValue("#rg-members")) === "201", "the hunt group survived the restart (without the revoked station)");
  check((await page.textContent("#speed-dials")).includes("0317001000"), "the speed dial survived the restart");
  check(await page.isChecked("#dnd-201"), "do not disturb for 201 survived the restart");
  check((await page.locator('#enrolled tr[data-ext="250"]').count()) === 0, "nothing about the revoked station came back");
  const st = JSON.parse(execFileSync(process.env.GW_BIN, ["--state", process.env.GW_STATE, "status", "--json"]));
  check(st.ring_group.source === "ring-group" && st.ring_group.members.join(",") === "201"
    && st.ring_group.office_mailbox === "201", `status shows the web's ring group and office mailbox after the restart (${JSON.stringify(st.ring_group)})`);
  check((await page.inputValue("#rg-mailbox")) === "201", "the office mailbox survived the restart");
  check((await page.locator('#ring-groups tr[data-ext="450"]').count()) === 1, "the second ring group survived the restart");
  const stored2 = readFileSync(`${process.env.GW_STATE}/voicemail/greeting.opus`);
  check(stored2.subarray(0, 4).toString() === "OggS", "the greeting survived the restart");
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  failed = true;
} finally {
  await browser.close();
  lines.close();
}
process.exit(failed ? 1 : 0);
