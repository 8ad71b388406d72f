// The Tandem clinician console: a single-page app over the public API only.
// Screens: /app/login, /app/ (patients and visits, new visit), /app/conversations/:id (live
// visit), /app/conversations/:id/summary (after the visit). The DOM is built with `h()` from
// text nodes, never from HTML strings, so transcript text cannot inject markup.

import { api, ApiError, download, login, logout, register, session, socketUrl } from './api.js';
import { Recorder, captureFormat } from './recorder.js';

const LANGUAGES = {
  en: 'English', es: 'Spanish', fr: 'French', de: 'German', pt: 'Portuguese', it: 'Italian',
  zh: 'Chinese', ar: 'Arabic', ru: 'Russian', vi: 'Vietnamese', ko: 'Korean', ja: 'Japanese',
  ht: 'Haitian Creole', tl: 'Tagalog', pl: 'Polish', hi: 'Hindi', uk: 'Ukrainian', fa: 'Persian',
};
const ACTION_TITLES = { note: 'Note', followup: 'Follow-up', prescription: 'Prescription', lab_order: 'Lab order' };
const FINAL_STATUSES = new Set(['confirmed', 'cancelled']);
const SUMMARY_WAIT_MS = 30000;

const main = document.getElementById('main');
const notice = document.getElementById('notice');
let teardown = () => {};

// ---------- small DOM helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function languageName(code) {
  if (!code) return 'unknown language';
  return LANGUAGES[code.split('-')[0]] ? `${LANGUAGES[code.split('-')[0]]} (${code})` : code;
}

function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' }) : '';
}

function patientName(p) {
  return p ? `${p.firstName} ${p.lastName}` : 'Unknown patient';
}

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

function languageField(id, label, value) {
  return [
    h('label', { for: id }, label),
    h('input', { id, name: id, list: 'language-codes', value, required: true, autocomplete: 'off',
      pattern: '[A-Za-z][A-Za-z0-9-]{1,15}', title: 'A language code such as es or pt-BR' }),
  ];
}

function languageList() {
  return h('datalist', { id: 'language-codes' },
    Object.entries(LANGUAGES).map(([code, name]) => h('option', { value: code }, name)));
}

/** Replaces the screen, runs the previous screen's cleanup, moves focus to the new heading. */
function render(title, ...children) {
  teardown();
  teardown = () => {};
  showNotice('');
  document.title = `${title} · Tandem`;
  main.replaceChildren(...children.flat());
  const heading = main.querySelector('h1');
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

function errorText(e) {
  return e instanceof ApiError || e instanceof Error ? e.message : String(e);
}

// ---------- routing ----------

function navigate(path, replace = false) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  route();
}

async function route() {
  const path = location.pathname.replace(/\/+$/, '');
  const nav = document.getElementById('nav');
  if (!session()) {
    nav.hidden = true;
    if (path !== '/app/login') history.replaceState(null, '', '/app/login');
    return loginScreen();
  }
  nav.hidden = false;
  document.getElementById('whoami').textContent = `Signed in as ${session().username}`;
  let m;
  if ((m = path.match(/^\/app\/conversations\/([^/]+)\/summary$/))) return summaryScreen(decodeURIComponent(m[1]));
  if ((m = path.match(/^\/app\/conversations\/([^/]+)$/))) return conversationScreen(decodeURIComponent(m[1]));
  if (path === '/app/login') return navigate('/app/', true);
  return homeScreen();
}

document.addEventListener('click', (e) => {
  const link = e.target.closest('a[data-link]');
  if (link && !e.ctrlKey && !e.metaKey && !e.shiftKey && e.button === 0) {
    e.preventDefault();
    navigate(link.getAttribute('href'));
  }
});
window.addEventListener('popstate', route);
document.getElementById('logout').addEventListener('click', () => {
  logout();
  navigate('/app/login');
});

/** Runs `work` with the button disabled; failures go to the notice region. */
async function busy(button, work) {
  button.disabled = true;
  try {
    await work();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return navigate('/app/login');
    showNotice(errorText(e));
  } finally {
    button.disabled = false;
  }
}

// ---------- log in / register ----------

function loginScreen() {
  const status = h('p', { class: 'form-status', role: 'status', 'aria-live': 'polite' });
  const form = h('form', { class: 'card narrow', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Log in'),
    h('label', { for: 'username' }, 'Username'),
    h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true, minlength: 3 }),
    h('label', { for: 'password' }, 'Password'),
    h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true, minlength: 8 }),
    h('div', { class: 'row' },
      h('button', { type: 'submit', id: 'login-button', class: 'primary' }, 'Log in'),
      h('button', { type: 'button', id: 'register-button' }, 'Create account')),
    status);
  const values = () => [form.username.value.trim(), form.password.value];
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    busy(form.querySelector('#login-button'), async () => {
      status.textContent = 'Logging in…';
      try {
        await login(...values());
      } catch (err) {
        status.textContent = errorText(err);
        return;
      }
      navigate('/app/', true);
    });
  });
  form.querySelector('#register-button').addEventListener('click', (e) => {
    if (!form.reportValidity()) return;
    busy(e.currentTarget, async () => {
      status.textContent = 'Creating account…';
      try {
        await register(...values(), navigator.language?.split('-')[0] || 'en');
        await login(...values());
      } catch (err) {
        status.textContent = errorText(err);
        return;
      }
      navigate('/app/', true);
    });
  });
  render('Log in', form);
}

// ---------- patients and visits ----------

async function homeScreen() {
  let me = { preferredLanguage: 'en' };
  const form = h('form', { class: 'card', 'aria-labelledby': 'new-visit-title' },
    h('h2', { id: 'new-visit-title' }, 'Start a visit'),
    h('div', { class: 'grid2' },
      h('div', {}, h('label', { for: 'firstName' }, 'Patient first name'),
        h('input', { id: 'firstName', name: 'firstName', required: true, autocomplete: 'off' })),
      h('div', {}, h('label', { for: 'lastName' }, 'Patient last name'),
        h('input', { id: 'lastName', name: 'lastName', required: true, autocomplete: 'off' })),
      h('div', {}, h('label', { for: 'dob' }, 'Date of birth'),
        h('input', { id: 'dob', name: 'dob', type: 'date', required: true })),
      h('div', {}, ...languageField('patientLanguage', 'Patient language', 'es')),
      h('div', {}, ...languageField('clinicianLanguage', 'Clinician language', 'en'))),
    languageList(),
    h('button', { type: 'submit', id: 'start-visit', class: 'primary big' }, 'Start visit'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    busy(form.querySelector('#start-visit'), async () => {
      const conversation = await api('POST', '/conversations', {
        firstName: form.firstName.value.trim(),
        lastName: form.lastName.value.trim(),
        dob: form.dob.value,
        patientLanguage: form.patientLanguage.value.trim(),
        clinicianLanguage: form.clinicianLanguage.value.trim(),
      });
      navigate(`/app/conversations/${encodeURIComponent(conversation.id)}`);
    });
  });

  const search = h('input', { id: 'search', type: 'search', autocomplete: 'off', placeholder: 'Name' });
  const patientList = h('ul', { class: 'list', id: 'patient-results', 'aria-label': 'Patients' });
  const visitList = h('ul', { class: 'list', id: 'visit-results', 'aria-label': 'Visits' });
  const resultStatus = h('p', { class: 'muted', role: 'status', 'aria-live': 'polite' });
  let conversations = [];

  function fillForm(p) {
    form.firstName.value = p.firstName;
    form.lastName.value = p.lastName;
    form.dob.value = p.dateOfBirth;
    form.patientLanguage.value = p.preferredLanguage;
    form.querySelector('#start-visit').focus();
  }

  function showVisits(q) {
    const needle = q.toLowerCase();
    const matches = conversations.filter((c) => !needle || patientName(c.patient).toLowerCase().includes(needle));
    visitList.replaceChildren(...matches.slice(0, 50).map((c) => {
      const done = c.status !== 'active';
      const href = `/app/conversations/${encodeURIComponent(c.id)}${done ? '/summary' : ''}`;
      return h('li', {},
        h('a', { href, 'data-link': true }, patientName(c.patient)),
        h('span', { class: 'muted' }, ` · ${formatTime(c.startTime)} · `),
        h('span', { class: `badge status-${c.status}` }, c.status.replace('_', ' ')));
    }));
    if (!matches.length) visitList.append(h('li', { class: 'muted' }, 'No visits.'));
  }

  let searchSeq = 0;
  async function runSearch() {
    const q = search.value.trim();
    const seq = ++searchSeq;
    showVisits(q);
    try {
      const { patients } = await api('GET', `/patients?limit=50&q=${encodeURIComponent(q)}`);
      if (seq !== searchSeq) return;
      patientList.replaceChildren(...patients.map((p) => h('li', {},
        h('span', { class: 'strong' }, patientName(p)),
        h('span', { class: 'muted' }, ` · born ${p.dateOfBirth} · ${languageName(p.preferredLanguage)} `),
        h('button', { type: 'button', class: 'quiet', onclick: () => fillForm(p),
          'aria-label': `New visit for ${patientName(p)}` }, 'New visit'))));
      if (!patients.length) patientList.append(h('li', { class: 'muted' }, 'No patients found.'));
      resultStatus.textContent = `${patients.length} patient(s) found.`;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return navigate('/app/login');
      resultStatus.textContent = errorText(e);
    }
  }
  let timer;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(runSearch, 250);
  });

  render('Patients and visits',
    h('h1', {}, 'Patients and visits'),
    h('div', { class: 'columns' },
      form,
      h('section', { class: 'card', 'aria-labelledby': 'find-title' },
        h('h2', { id: 'find-title' }, 'Find a patient or visit'),
        h('label', { for: 'search' }, 'Search by name'),
        search, resultStatus,
        h('h3', {}, 'Patients'), patientList,
        h('h3', {}, 'Recent visits'), visitList)));
  teardown = () => clearTimeout(timer);

  try {
    [me, conversations] = await Promise.all([api('GET', '/auth/me'), api('GET', '/conversations?limit=200')]);
    if (me.preferredLanguage) form.clinicianLanguage.value = me.preferredLanguage;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return navigate('/app/login');
    showNotice(errorText(e));
  }
  runSearch();
}

// ---------- the transcript ----------

/**
 * Utterance rows keyed by original message id; translations join their original's row.
 * Without `onReplay` (after the visit, when no audio is kept) rows have no replay button.
 */
class Transcript {
  constructor(conversation, { onReplay }) {
    this.conversation = conversation;
    this.onReplay = onReplay;
    this.rows = new Map();
    this.el = h('ol', { class: 'transcript', id: 'transcript', 'aria-label': 'Transcript' });
    this.empty = h('li', { class: 'muted empty' }, 'Nothing said yet. Press Record and speak.');
    this.el.append(this.empty);
  }

  row(id) {
    let row = this.rows.get(id);
    if (!row) {
      const speaker = h('span', { class: 'speaker' });
      const time = h('span', { class: 'muted' });
      const originalLang = h('span', { class: 'lang' });
      const original = h('p', { class: 'text original' });
      const translationLang = h('span', { class: 'lang' });
      const translation = h('p', { class: 'text translation' }, '…');
      const replay = this.onReplay && h('button', { type: 'button', class: 'quiet replay', disabled: true,
        onclick: () => this.onReplay(id) }, 'Replay');
      const el = h('li', { class: 'utterance', 'data-message-id': id },
        h('div', { class: 'meta' }, speaker, time, replay),
        h('div', { class: 'pair' },
          h('div', { class: 'side' }, originalLang, original),
          h('div', { class: 'side' }, translationLang, translation)));
      row = { el, speaker, time, originalLang, original, translationLang, translation, replay };
      this.rows.set(id, row);
      this.empty.remove();
      this.el.append(el);
    }
    return row;
  }

  add(message) {
    if (message.senderType === 'translation') {
      const row = this.row(message.originalMessageId);
      row.translationLang.textContent = languageName(message.language);
      row.translation.textContent = message.originalText;
      row.translation.lang = message.language;
      return;
    }
    const row = this.row(message.id);
    const clinician = message.senderType === 'user';
    row.el.classList.toggle('from-patient', !clinician);
    row.speaker.textContent = clinician ? 'Clinician' : 'Patient';
    row.time.textContent = ` · ${new Date(message.timestamp).toLocaleTimeString()}`;
    row.originalLang.textContent = languageName(message.language);
    row.original.textContent = message.originalText;
    row.original.lang = message.language;
    if (row.translation.textContent === '…') {
      const target = clinician ? this.conversation.patientLanguage : this.conversation.clinicianLanguage;
      row.translationLang.textContent = languageName(target);
    }
  }

  /** After a visit: rows whose translation never came say so instead of an ellipsis. */
  settle() {
    for (const row of this.rows.values()) {
      if (row.translation.textContent === '…') row.translation.textContent = '(no translation)';
    }
  }

  audioReady(id) {
    const row = this.rows.get(id);
    if (row?.replay) {
      row.replay.disabled = false;
      row.replay.textContent = 'Replay';
      row.replay.setAttribute('aria-label', `Replay the spoken translation of: ${row.original.textContent}`);
    }
  }

  /** The clip arrived but this device could not decode or play it. */
  playFailed(id) {
    const row = this.rows.get(id);
    if (row?.replay) row.replay.textContent = 'Replay (audio could not play)';
  }
}

async function loadMessages(id, transcript) {
  let after = '';
  for (;;) {
    const page = await api('GET', `/conversations/${encodeURIComponent(id)}/messages?limit=500${after}`);
    page.messages.forEach((m) => transcript.add(m));
    if (!page.nextCursor) return;
    after = `&after=${encodeURIComponent(page.nextCursor)}`;
  }
}

// ---------- actions ----------

/** Action cards keyed by id; created, updated and listed actions all go through `upsert`. */
class ActionBoard {
  constructor() {
    this.cards = new Map();
    this.el = h('ul', { class: 'actions', id: 'actions', 'aria-label': 'Actions', 'aria-live': 'polite' });
    this.empty = h('li', { class: 'muted empty' }, 'No actions yet. Voice commands such as “take a note” appear here.');
    this.el.append(this.empty);
  }

  upsert(action) {
    const previous = this.cards.get(action.id);
    const card = this.card(action);
    this.cards.set(action.id, card);
    this.empty.remove();
    if (previous) previous.replaceWith(card);
    else this.el.prepend(card);
  }

  card(action) {
    const title = ACTION_TITLES[action.type] || action.type;
    const fields = Object.entries(action.data || {}).filter(([k]) => !['id', 'conversationId'].includes(k));
    const status = h('p', { class: 'form-status', role: 'status' });
    const card = h('li', { class: `action card status-${action.status}`, 'data-action-id': action.id },
      h('div', { class: 'meta' },
        h('h3', {}, title),
        h('span', { class: `badge status-${action.status}` }, action.status.replace('_', ' '))),
      h('dl', {}, fields.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v === null ? '—' : String(v))])),
      status);
    if (!FINAL_STATUSES.has(action.status)) {
      const act = (verb, label) => h('button', { type: 'button', class: verb === 'confirm' ? 'primary' : '',
        'aria-label': `${label} ${title}`,
        onclick: (e) => this.change(e.currentTarget, status, () => api('POST', `/actions/${encodeURIComponent(action.id)}/${verb}`)) }, label);
      card.append(h('div', { class: 'row' },
        act('confirm', 'Confirm'),
        h('button', { type: 'button', 'aria-label': `Edit ${title}`, onclick: () => this.edit(card, action, fields, status) }, 'Edit'),
        act('cancel', 'Cancel')));
    }
    return card;
  }

  async change(button, status, request) {
    button.disabled = true;
    status.textContent = '';
    try {
      this.upsert(await request());
    } catch (e) {
      status.textContent = e instanceof ApiError && e.routeMissing
        ? 'This server cannot review actions yet (it has no action review routes).'
        : errorText(e);
      button.disabled = false;
    }
  }

  edit(card, action, fields, status) {
    const inputs = fields.map(([k, v]) => {
      const id = `edit-${action.id}-${k}`;
      const input = h('input', { id, name: k, value: v ?? '', type: typeof v === 'number' ? 'number' : 'text' });
      return { k, v, input, field: h('div', {}, h('label', { for: id }, k), input) };
    });
    const save = h('button', { type: 'submit', class: 'primary' }, 'Save');
    const form = h('form', { class: 'edit' }, inputs.map((i) => i.field),
      h('div', { class: 'row' }, save,
        h('button', { type: 'button', onclick: () => { form.remove(); card.querySelector('.row')?.removeAttribute('hidden'); } }, 'Discard')));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const data = {};
      for (const { k, v, input } of inputs) {
        const value = typeof v === 'number' ? Number(input.value) : input.value;
        if (value !== (v ?? '')) data[k] = value;
      }
      this.change(save, status, () => api('PATCH', `/actions/${encodeURIComponent(action.id)}`, { data }));
    });
    card.querySelector('.row')?.setAttribute('hidden', '');
    card.insertBefore(form, status);
    inputs[0]?.input.focus();
  }
}

// ---------- sockets ----------

/**
 * The control socket for one conversation, reconnecting while the screen is open. Asking for
 * the actions registers interest, so `action_*` and summary pushes reach this tab.
 */
function controlSocket(conversationId, onEvent) {
  let ws;
  let closed = false;
  let delay = 500;
  const open = () => {
    ws = new WebSocket(socketUrl('/ws'));
    ws.onopen = () => {
      delay = 500;
      for (const type of ['select_conversation', 'get_actions']) {
        ws.send(JSON.stringify({ type, payload: { conversationId } }));
      }
    };
    ws.onmessage = (e) => {
      try {
        onEvent(JSON.parse(e.data));
      } catch {
        /* a frame that is not JSON is not for us */
      }
    };
    ws.onclose = async (e) => {
      if (closed) return;
      if (e.code === 4001) {
        // The access token expired: any REST call refreshes it.
        try {
          await api('GET', '/auth/me');
        } catch {
          return navigate('/app/login');
        }
      }
      setTimeout(() => !closed && open(), delay);
      delay = Math.min(delay * 2, 10000);
    };
  };
  open();
  return {
    send: (msg) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(msg)),
    close: () => {
      closed = true;
      ws.close();
    },
  };
}

/** Plays spoken translations one after another, keeping each clip for the replay button. */
class Speaker {
  constructor(onReady, onError) {
    this.clips = new Map();
    this.partial = new Map();
    this.queue = [];
    this.playing = null;
    this.onReady = onReady;
    this.onError = onError;
    this.autoplay = true;
  }

  receive(payload) {
    const id = payload.originalMessageId;
    const bytes = Uint8Array.from(atob(payload.audioBase64 || ''), (c) => c.charCodeAt(0));
    let parts = [bytes];
    if (payload.chunk) {
      parts = this.partial.get(id) || [];
      parts.push(bytes);
      this.partial.set(id, parts);
      if (!payload.chunk.last) return;
      this.partial.delete(id);
    }
    const old = this.clips.get(id);
    if (old) URL.revokeObjectURL(old);
    this.clips.set(id, URL.createObjectURL(new Blob(parts, { type: payload.format.split(';')[0] })));
    this.onReady(id);
    if (this.autoplay) this.play(id);
  }

  play(id) {
    if (!this.clips.has(id)) return;
    this.queue.push(id);
    if (!this.playing) this.next();
  }

  next() {
    const id = this.queue.shift();
    if (!id) {
      this.playing = null;
      return;
    }
    this.playing = new Audio(this.clips.get(id));
    this.playing.onended = () => this.next();
    this.playing.play().catch(() => {
      this.onError(id);
      this.next();
    });
  }

  stop() {
    this.queue = [];
    this.playing?.pause();
    this.playing = null;
    for (const url of this.clips.values()) URL.revokeObjectURL(url);
    this.clips.clear();
  }
}

// ---------- the live visit ----------

function visitHeader(c, extra) {
  const p = c.patient;
  return h('div', { class: 'visit-header' },
    h('h1', {}, patientName(p)),
    h('p', { class: 'muted' },
      `Born ${p?.dateOfBirth ?? '—'} · Clinician: ${languageName(c.clinicianLanguage)} · Patient: ${languageName(c.patientLanguage)} · `,
      h('span', { class: `badge status-${c.status}` }, c.status.replace('_', ' '))),
    extra);
}

function exportLinks(id) {
  const status = h('p', { class: 'form-status', role: 'status' });
  const link = (format, label, ext) => h('button', { type: 'button', class: 'quiet', id: `export-${format}`, onclick: (e) => busy(e.currentTarget, async () => {
    status.textContent = '';
    try {
      const res = await download(`/conversations/${encodeURIComponent(id)}/export?format=${format}`);
      const url = URL.createObjectURL(await res.blob());
      const a = h('a', { href: url, download: `visit-${id}.${ext}` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      status.textContent = err instanceof ApiError && err.routeMissing
        ? 'Export is not available on this server yet.'
        : errorText(err);
    }
  }) }, label);
  return h('div', { class: 'export', role: 'group', 'aria-label': 'Export' },
    h('span', { class: 'muted' }, 'Export: '), link('json', 'JSON', 'json'), link('markdown', 'Markdown', 'md'), status);
}

/** The conversation, or null after showing why it could not be read. */
async function loadConversation(id) {
  try {
    return await api('GET', `/conversations/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) navigate('/app/login');
    else {
      render('Visit', h('h1', {}, 'Visit not found'), h('p', {}, errorText(e)),
        h('a', { href: '/app/', 'data-link': true }, 'Back to patients and visits'));
    }
    return null;
  }
}

/** Control-socket frames that concern the action board; true when `ev` was one of them. */
function applyActionEvent(actions, ev) {
  if (ev.type === 'action_list') ev.payload.actions.slice().reverse().forEach((a) => actions.upsert(a));
  else if (ev.type === 'action_created' || ev.type === 'action_updated') actions.upsert(ev.payload);
  else return false;
  return true;
}

async function conversationScreen(id) {
  const conversation = await loadConversation(id);
  if (!conversation) return;
  if (conversation.status !== 'active') return navigate(`/app/conversations/${encodeURIComponent(id)}/summary`, true);

  const actions = new ActionBoard();
  const transcript = new Transcript(conversation, { onReplay: (mid) => speaker.play(mid) });
  const speaker = new Speaker((mid) => transcript.audioReady(mid), (mid) => transcript.playFailed(mid));
  const captions = h('p', { class: 'captions', id: 'captions', 'aria-live': 'polite', 'aria-label': 'Live captions' });
  const partial = new Map();
  const liveStatus = h('p', { class: 'live-status', id: 'live-status', role: 'status' }, 'Not recording.');
  const record = h('button', { type: 'button', id: 'record', class: 'record', 'aria-pressed': 'false' }, 'Record');
  const autoplay = h('input', { type: 'checkbox', id: 'autoplay', checked: true });
  autoplay.addEventListener('change', () => { speaker.autoplay = autoplay.checked; });
  const speakerChoice = h('select', { id: 'speaker-role' },
    h('option', { value: 'auto' }, 'Detect by language'),
    h('option', { value: 'clinician' }, 'Clinician is speaking'),
    h('option', { value: 'patient' }, 'Patient is speaking'));

  let audio = null;
  let audioReady = null;
  let recorder = null;
  /** The screen is going away (or the visit ended): a closing audio socket is expected. */
  let leaving = false;

  function onAudioEvent(ev) {
    switch (ev.type) {
      case 'openai_connected':
        if (recorder) liveStatus.textContent = 'Listening…';
        break;
      case 'openai_disconnected':
        liveStatus.textContent = 'Transcription disconnected; reconnecting…';
        break;
      case 'transcript_delta': {
        const { itemId, delta } = ev.payload;
        partial.set(itemId, (partial.get(itemId) || '') + delta);
        captions.textContent = partial.get(itemId);
        break;
      }
      case 'new_message':
        if (ev.payload.senderType !== 'translation') {
          partial.delete(ev.payload.sttItemId);
          captions.textContent = '';
        }
        transcript.add(ev.payload);
        break;
      case 'tts_audio':
        speaker.receive(ev.payload);
        break;
      case 'action_created':
      case 'action_updated':
        actions.upsert(ev.payload);
        break;
      case 'conversation_ended':
        leaving = true;
        record.disabled = true;
        liveStatus.textContent = 'The visit has ended.';
        break;
      case 'command_executed':
        if (ev.payload.status !== 'success') showNotice(ev.payload.message);
        break;
      case 'error':
        if (ev.code !== 'lagged') showNotice(ev.message || ev.text);
        break;
      default:
    }
  }

  function openAudio() {
    if (audioReady) return audioReady;
    audioReady = new Promise((resolve, reject) => {
      audio = new WebSocket(socketUrl('/transcription', { conversationId: id }));
      audio.binaryType = 'arraybuffer';
      audio.onopen = () => resolve(audio);
      audio.onerror = () => reject(new Error('The audio connection could not be opened.'));
      audio.onmessage = (e) => {
        try {
          onAudioEvent(JSON.parse(e.data));
        } catch {
          /* not JSON */
        }
      };
      audio.onclose = (e) => {
        audio = null;
        audioReady = null;
        if (recorder) stopRecording();
        if (leaving || e.code === 1000) return;
        showNotice(`Audio connection closed: ${e.reason || `code ${e.code}`}. Press Record to reconnect.`);
        // Too slow (1013): events were dropped, so the stored transcript is read again.
        if (e.code === 1013) loadMessages(id, transcript).catch(() => {});
      };
    });
    return audioReady;
  }

  async function startRecording() {
    const ws = await openAudio();
    const rec = new Recorder(
      (msg) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(msg)),
      (buf) => ws.readyState === WebSocket.OPEN && ws.send(buf));
    if (speakerChoice.value !== 'auto') ws.send(JSON.stringify({ type: 'speaker', role: speakerChoice.value }));
    await rec.start();
    recorder = rec;
    record.setAttribute('aria-pressed', 'true');
    record.textContent = 'Stop';
    record.classList.add('on');
    liveStatus.textContent = 'Listening…';
  }

  async function stopRecording() {
    const rec = recorder;
    recorder = null;
    record.setAttribute('aria-pressed', 'false');
    record.textContent = 'Record';
    record.classList.remove('on');
    liveStatus.textContent = 'Not recording.';
    if (rec) await rec.stop();
  }

  record.addEventListener('click', () => busy(record, () => (recorder ? stopRecording() : startRecording())));
  speakerChoice.addEventListener('change', () => {
    audio?.readyState === WebSocket.OPEN && audio.send(JSON.stringify({ type: 'speaker', role: speakerChoice.value }));
  });

  const endConfirm = h('div', { class: 'confirm', hidden: true, role: 'group', 'aria-label': 'Confirm ending the visit' },
    h('span', {}, 'End this visit now? Recording stops and the summary is prepared.'),
    h('button', { type: 'button', id: 'end-confirm', class: 'danger', onclick: (e) => busy(e.currentTarget, async () => {
      if (recorder) await stopRecording();
      liveStatus.textContent = 'Ending the visit…';
      leaving = true;
      await api('POST', `/conversations/${encodeURIComponent(id)}/end`);
      navigate(`/app/conversations/${encodeURIComponent(id)}/summary`);
    }) }, 'Yes, end visit'),
    h('button', { type: 'button', onclick: () => { endConfirm.hidden = true; endButton.focus(); } }, 'Keep going'));
  const endButton = h('button', { type: 'button', id: 'end-visit', class: 'danger',
    onclick: () => { endConfirm.hidden = false; endConfirm.querySelector('#end-confirm').focus(); } }, 'End visit');

  const unsupported = captureFormat() ? null : h('p', { class: 'notice' }, 'This browser cannot record audio.');
  render(patientName(conversation.patient),
    visitHeader(conversation, h('div', { class: 'row' }, endButton, exportLinks(id))),
    endConfirm,
    h('div', { class: 'visit' },
      h('section', { class: 'live', 'aria-label': 'Recording and transcript' },
        h('div', { class: 'controls' },
          record,
          h('div', { class: 'control-stack' },
            liveStatus,
            h('label', { for: 'speaker-role' }, 'Speaker'), speakerChoice,
            h('label', { class: 'check', for: 'autoplay' }, autoplay, ' Play translations aloud')),
          unsupported),
        h('h2', { class: 'sr-only' }, 'Live captions'),
        captions,
        h('h2', {}, 'Transcript'),
        transcript.el),
      h('aside', { class: 'side-panel', 'aria-labelledby': 'actions-title' },
        h('h2', { id: 'actions-title' }, 'Actions'),
        actions.el)));
  if (unsupported) record.disabled = true;

  const control = controlSocket(id, (ev) => applyActionEvent(actions, ev));
  teardown = () => {
    leaving = true;
    control.close();
    recorder?.stop();
    audio?.close(1000);
    speaker.stop();
  };
  try {
    await loadMessages(id, transcript);
  } catch (e) {
    showNotice(errorText(e));
  }
}

// ---------- after the visit ----------

async function summaryScreen(id) {
  const conversation = await loadConversation(id);
  if (!conversation) return;
  const summaryText = h('div', { class: 'summary-text', id: 'summary-text' });
  const summaryStatus = h('p', { class: 'live-status', id: 'summary-status', role: 'status', 'aria-live': 'polite' }, 'Loading the summary…');
  const retry = h('button', { type: 'button', id: 'summary-retry', hidden: true }, 'Summarize again');
  const actions = new ActionBoard();
  const transcript = new Transcript(conversation, { onReplay: null });
  let waiting;
  let poll;

  /** Shows a summary given as text or as a Document; false when there is none yet. */
  function showSummary(summary) {
    const content = typeof summary === 'string' ? summary : summary?.content;
    if (typeof content !== 'string' || !content.trim()) return false;
    clearTimeout(waiting);
    clearInterval(poll);
    const paragraphs = (text) => text.split(/\n{2,}/).map((para) => h('p', {}, para));
    const takeHome = typeof summary === 'object' && summary?.takeHome?.trim();
    summaryText.replaceChildren(...paragraphs(content));
    if (takeHome) {
      summaryText.append(h('h3', {}, `For the patient (${languageName(conversation.patientLanguage)})`),
        h('div', { lang: conversation.patientLanguage }, paragraphs(takeHome)));
    }
    summaryStatus.textContent = 'Summary ready.';
    retry.hidden = true;
    return true;
  }
  function giveUp() {
    clearInterval(poll);
    summaryStatus.textContent = 'No summary was produced for this visit. This server may not generate summaries yet.';
    retry.hidden = false;
  }
  async function fetchSummary() {
    const doc = await api('GET', `/conversations/${encodeURIComponent(id)}/summary`);
    return showSummary(doc);
  }
  function awaitSummary() {
    summaryStatus.textContent = 'Preparing the summary…';
    waiting = setTimeout(giveUp, SUMMARY_WAIT_MS);
    poll = setInterval(() => fetchSummary().catch(() => {}), 3000);
  }
  retry.addEventListener('click', () => busy(retry, async () => {
    try {
      const doc = await api('POST', `/conversations/${encodeURIComponent(id)}/summary`);
      if (!showSummary(doc)) awaitSummary();
    } catch (e) {
      summaryStatus.textContent = e instanceof ApiError && e.routeMissing
        ? 'This server cannot generate summaries yet.'
        : errorText(e);
    }
  }));

  render(`Summary · ${patientName(conversation.patient)}`,
    visitHeader(conversation, h('div', { class: 'row' }, exportLinks(id),
      conversation.status === 'active'
        ? h('a', { href: `/app/conversations/${encodeURIComponent(id)}`, 'data-link': true, class: 'button' }, 'Back to the visit')
        : null)),
    h('div', { class: 'visit' },
      h('section', { 'aria-labelledby': 'summary-title' },
        h('h2', { id: 'summary-title' }, 'Visit summary'),
        summaryStatus, summaryText, retry,
        h('h2', {}, 'Transcript'), transcript.el),
      h('aside', { class: 'side-panel', 'aria-labelledby': 'actions-title' },
        h('h2', { id: 'actions-title' }, 'Actions'), actions.el)));

  const control = controlSocket(id, (ev) => {
    if (applyActionEvent(actions, ev)) return;
    if (ev.type === 'summary_ready') showSummary(ev.payload?.summary ?? ev.payload);
    else if (ev.type === 'summary_data') showSummary(ev.payload?.summary);
  });
  teardown = () => {
    control.close();
    clearTimeout(waiting);
    clearInterval(poll);
  };
  try {
    await loadMessages(id, transcript);
    transcript.settle();
    if (!(await fetchSummary())) awaitSummary();
  } catch (e) {
    summaryStatus.textContent = errorText(e);
  }
}

route();
