// Fanout join page: plain JavaScript on the browser's WebRTC API (docs/webrtc.md).
// Two RTCPeerConnections: `pub` (we offer what we send), `sub` (the control plane offers
// what we receive). Signaling is one WebSocket, /v1/meetings/{id}/ws.
// State for tests and debugging: window.fanout.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const meetingId = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
  const tokenKey = `fanout:${meetingId}:token`;
  const ICE_GRACE_MS = 5000;
  const CONNECTION = { iceServers: [], bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };
  const SIMULCAST = [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
    { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
  ];

  // Everything a test may look at.
  const fanout = {
    meetingId,
    pub: null,            // publish RTCPeerConnection
    sub: null,            // subscribe RTCPeerConnection
    ws: null,
    me: null,             // our participant id
    role: null,
    presence: null,
    participants: {},     // id → participant as in the `joined` meeting, kept current by events
    breakouts: {},        // id → name
    events: [],           // every server message of type `event`, in order
    local: null,          // MediaStream of microphone and camera
    screen: null,         // MediaStream of the screen share
    transportError: null, // the last publish/subscribe error, e.g. FAILED_PRECONDITION
    send: (msg) => send(msg),
  };
  window.fanout = fanout;

  let joinInput = null;     // what the user typed, for a fresh join after a failed resume
  let closing = false;      // we left, were denied, or the meeting ended: no reconnect
  let reconnects = 0;
  let nextId = 1;
  const pending = new Map(); // request id → {resolve, reject}
  const tiles = new Map();   // key (participant id, or id + ":screen") → figure
  let pubChain = Promise.resolve();
  let subChain = Promise.resolve();
  let screenTransceiver = null;

  // ---------------------------------------------------------------- screens and status

  function show(section) {
    for (const s of ['prejoin', 'waiting', 'meeting', 'ended']) $(s).hidden = s !== section;
  }
  function status(text) { $('status').textContent = text; }
  function alertText(text) {
    $('alert').hidden = !text;
    $('alert').textContent = text || '';
  }
  function log(text) {
    const li = document.createElement('li');
    li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    $('log').prepend(li);
    while ($('log').children.length > 100) $('log').lastChild.remove();
  }
  function nameOf(id) {
    if (id === fanout.me) return 'You';
    return fanout.participants[id]?.display_name || 'Someone';
  }
  function isHost() { return fanout.role === 'host'; }

  // ---------------------------------------------------------------- signaling

  function send(msg) {
    if (fanout.ws && fanout.ws.readyState === WebSocket.OPEN) fanout.ws.send(JSON.stringify(msg));
  }

  // Sends a request with an `id` and resolves with its answer (`ok`, `publish_answer`),
  // rejects with its `error`.
  function request(msg) {
    const id = nextId++;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject });
      send({ ...msg, id });
    });
  }

  function connect(first) {
    if (fanout.ws) { fanout.ws.onclose = null; fanout.ws.close(1000); }
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/v1/meetings/${encodeURIComponent(meetingId)}/ws`);
    fanout.ws = ws;
    ws.onopen = () => send(first);
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      onMessage(msg).catch((err) => console.error('fanout:', err));
    };
    ws.onclose = (e) => {
      if (fanout.ws !== ws) return;
      for (const { reject } of pending.values()) reject(new Error('connection closed'));
      pending.clear();
      if (closing || !fanout.me) return;
      if (e.code === 4000) {
        closing = true;
        end('This meeting was opened in another tab or window.');
        return;
      }
      // Resume with the join token; the control plane keeps us for a grace period.
      const token = sessionStorage.getItem(tokenKey);
      if (!token || reconnects >= 5) { end('The connection to the meeting was lost.'); return; }
      reconnects += 1;
      status('Reconnecting…');
      setTimeout(() => connect({ type: 'join', join_token: token }), 500 * 2 ** reconnects);
    };
  }

  async function onMessage(msg) {
    if (msg.id !== undefined && pending.has(msg.id)) {
      const p = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.type === 'error') p.reject(Object.assign(new Error(msg.message), { code: msg.code }));
      else p.resolve(msg);
      return;
    }
    switch (msg.type) {
      case 'joined': return onJoined(msg);
      case 'event': return onEvent(msg.event);
      case 'snapshot': return loadMeeting(msg.meeting);
      case 'subscribe_offer': return onSubscribeOffer(msg);
      case 'error': return onError(msg);
      default: return undefined;
    }
  }

  function onError(msg) {
    if (msg.request === 'join') {
      sessionStorage.removeItem(tokenKey);
      if (!fanout.me && joinInput && msg.code === 'FAILED_PRECONDITION' && !joinInput.tried) {
        // A resume of a participant who has left: join afresh.
        joinInput.tried = true;
        send(joinMessage());
        return;
      }
      show('prejoin');
      status('');
      // A failed resume from an earlier visit needs no alarm: just join again.
      if (joinInput) alertText(msg.code === 'PERMISSION_DENIED' ? 'Wrong passcode or host key.' : msg.message);
      $('name').focus();
      $('join-button').disabled = false;
      return;
    }
    alertText(msg.message);
  }

  function joinMessage() {
    const { name, passcode, hostKey, mic, cam } = joinInput;
    const msg = { type: 'join', display_name: name, audio_muted: !mic, video_muted: !cam };
    if (passcode) msg.passcode = passcode;
    if (hostKey) msg.host_key = hostKey;
    return msg;
  }

  // ---------------------------------------------------------------- meeting state

  function loadMeeting(meeting) {
    fanout.participants = {};
    for (const p of meeting.participants) fanout.participants[p.id] = { ...p };
    fanout.breakouts = {};
    for (const b of meeting.breakouts) fanout.breakouts[b.breakout_id] = b.name;
    $('recording').hidden = !meeting.recording;
    renderPeople();
  }

  async function onJoined(msg) {
    reconnects = 0;
    if (joinInput) joinInput.tried = false;
    alertText('');
    fanout.me = msg.participant_id;
    fanout.role = msg.role;
    fanout.presence = msg.presence;
    sessionStorage.setItem(tokenKey, msg.join_token);
    loadMeeting(msg.meeting);
    if (msg.presence === 'waiting') {
      show('waiting');
      status('In the waiting room.');
      return;
    }
    await enterMeeting(msg.resumed);
  }

  async function enterMeeting(resumed) {
    show('meeting');
    status(resumed ? 'Reconnected.' : 'You are in the meeting.');
    $('host-panel').hidden = !isHost();
    for (const [id, p] of Object.entries(fanout.participants)) {
      if (id !== fanout.me && p.presence === 'admitted') tile(id);
    }
    if (resumed && fanout.pub) return; // the peer connections survived the socket
    await buildConnections();
  }

  function onEvent(event) {
    fanout.events.push(event);
    const who = event.participant;
    const p = who && fanout.participants[who];
    switch (event.type) {
      case 'USER_JOINED':
        fanout.participants[who] = { ...(p || {}), id: who, display_name: event.display_name, role: event.role, presence: 'admitted' };
        if (who !== fanout.me) { tile(who); log(`${event.display_name} joined`); }
        break;
      case 'USER_LEFT':
        log(`${nameOf(who)} left`);
        delete fanout.participants[who];
        removeTile(who);
        removeTile(`${who}:screen`);
        break;
      case 'WAITING':
        fanout.participants[who] = { id: who, display_name: event.display_name, presence: 'waiting', role: 'panelist' };
        log(`${event.display_name} is waiting`);
        break;
      case 'ADMITTED':
        if (p) p.presence = 'admitted';
        if (who === fanout.me) { fanout.presence = 'admitted'; enterMeeting(false); }
        break;
      case 'DENIED':
        if (who === fanout.me) { closing = true; end('The host did not let you in.'); return; }
        delete fanout.participants[who];
        break;
      case 'MUTE_CHANGED':
        if (p) Object.assign(p, { audio_muted: event.audio_muted, video_muted: event.video_muted });
        if (who === fanout.me) applyOwnMute(event.audio_muted, event.video_muted);
        break;
      case 'SCREENSHARE_STARTED':
        if (p) p.screen_sharing = true;
        log(`${nameOf(who)} is sharing their screen`);
        break;
      case 'SCREENSHARE_STOPPED':
        if (p) p.screen_sharing = false;
        if (who === fanout.me && fanout.screen) stopShare(false);
        removeTile(`${who}:screen`);
        break;
      case 'ACTIVE_SPEAKER':
        for (const [key, fig] of tiles) fig.classList.toggle('speaking', key === who);
        break;
      case 'ROLE_CHANGED':
        if (p) p.role = event.to;
        if (who === fanout.me) {
          fanout.role = event.to;
          $('host-panel').hidden = !isHost();
          if (event.from === 'attendee' && fanout.presence === 'admitted') rebuild();
        }
        log(`${nameOf(who)} is now ${event.to}`);
        break;
      case 'BREAKOUT_CREATED':
        fanout.breakouts[event.breakout] = event.name;
        break;
      case 'BREAKOUT_MOVED':
        if (p) p.breakout = event.to;
        log(`${nameOf(who)} moved to ${event.to ? fanout.breakouts[event.to] || 'a room' : 'the main room'}`);
        break;
      case 'BREAKOUT_CLOSED':
        delete fanout.breakouts[event.breakout];
        break;
      case 'FORWARDER_CHANGED':
        // Another forwarder, another DTLS certificate: both connections start over.
        if (!who || who === fanout.me) { log('Media moved to another server'); rebuild(); }
        break;
      case 'RECORDING_STARTED': $('recording').hidden = false; log('Recording started'); break;
      case 'RECORDING_STOPPED': $('recording').hidden = true; log('Recording stopped'); break;
      case 'MEETING_ENDED': closing = true; end('The meeting has ended.'); return;
      default: break;
    }
    renderPeople();
  }

  // ---------------------------------------------------------------- media

  async function openLocalMedia() {
    if (fanout.local) return fanout.local;
    const want = { audio: joinInput?.mic !== false, video: joinInput?.cam !== false };
    try {
      fanout.local = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 1280, height: 720 } });
    } catch (err) {
      alertText(`No camera or microphone (${err.name}): you can still watch and listen.`);
      fanout.local = new MediaStream();
    }
    for (const t of fanout.local.getAudioTracks()) t.enabled = want.audio;
    for (const t of fanout.local.getVideoTracks()) t.enabled = want.video;
    updateToggles();
    const fig = tile('local', 'You');
    fig.classList.add('local');
    const video = fig.querySelector('video');
    video.muted = true;
    video.srcObject = fanout.local;
    return fanout.local;
  }

  function negotiatePublish(iceRestart) {
    pubChain = pubChain.then(async () => {
      const pc = fanout.pub;
      if (!pc) return;
      const offer = await pc.createOffer({ iceRestart: !!iceRestart });
      await pc.setLocalDescription(offer);
      try {
        const answer = await request({ type: 'publish_offer', sdp: offer.sdp });
        if (pc === fanout.pub) await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
      } catch (err) {
        fanout.transportError = { code: err.code, message: err.message };
        status(`Video is not available: ${err.message}`);
      }
    }).catch((err) => console.error('fanout: publish negotiation', err));
    return pubChain;
  }

  function onSubscribeOffer(msg) {
    subChain = subChain.then(async () => {
      await subscribeReady;
      const pc = fanout.sub;
      if (!pc) return;
      await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      send({ type: 'subscribe_answer', sdp: answer.sdp, revision: msg.revision });
    }).catch((err) => console.error('fanout: subscribe negotiation', err));
    return subChain;
  }

  // ICE restart when a leg stays failed or disconnected for ICE_GRACE_MS.
  function watchIce(pc, connection) {
    let timer = null;
    pc.oniceconnectionstatechange = () => {
      const bad = pc.iceConnectionState === 'failed' || pc.iceConnectionState === 'disconnected';
      if (!bad) { clearTimeout(timer); timer = null; return; }
      if (timer) return;
      timer = setTimeout(async () => {
        timer = null;
        const still = pc.iceConnectionState === 'failed' || pc.iceConnectionState === 'disconnected';
        if (!still || pc.signalingState === 'closed') return;
        await restartIce(connection);
      }, ICE_GRACE_MS);
    };
  }

  // New ICE credentials for one connection (also `fanout.restartIce`, for a network
  // change the browser cannot see, and for tests).
  async function restartIce(connection) {
    log(`Restarting the ${connection} connection`);
    try {
      await request({ type: 'ice_restart', connection });
      if (connection === 'publish') await negotiatePublish(true);
      // subscribe: the control plane sends a new subscribe_offer.
    } catch (err) {
      fanout.transportError = { code: err.code, message: err.message };
    }
  }
  fanout.restartIce = restartIce;

  // One certificate for both connections: the forwarder checks both DTLS handshakes
  // against the one fingerprint the control plane has for this participant. Made as the
  // page loads, so that joining does not wait for it.
  const certificate = RTCPeerConnection.generateCertificate({ name: 'ECDSA', namedCurve: 'P-256' });

  // Settles once the subscribe connection of the latest build exists: a subscribe offer
  // may arrive while the build still waits for the certificate.
  let subscribeReady = Promise.resolve();

  async function buildConnections() {
    let ready;
    subscribeReady = new Promise((resolve) => { ready = resolve; });
    try {
      fanout.certificate = await certificate;
      const config = { ...CONNECTION, certificates: [fanout.certificate] };
      closeConnections();
      const sub = new RTCPeerConnection(config);
      fanout.sub = sub;
      watchIce(sub, 'subscribe');
      sub.ontrack = (e) => onRemoteTrack(e);
      ready();
      await buildPublish(config);
    } finally {
      ready();
    }
  }

  async function buildPublish(config) {
    if (fanout.role === 'attendee') return; // attendees only watch
    const local = await openLocalMedia();
    const pub = new RTCPeerConnection(config);
    fanout.pub = pub;
    watchIce(pub, 'publish');
    const [audio] = local.getAudioTracks();
    const [video] = local.getVideoTracks();
    pub.addTransceiver(audio || 'audio', { direction: 'sendonly', streams: [local] });
    pub.addTransceiver(video || 'video', { direction: 'sendonly', streams: [local], sendEncodings: SIMULCAST });
    if (fanout.screen) {
      screenTransceiver = pub.addTransceiver(fanout.screen.getVideoTracks()[0], { direction: 'sendonly', streams: [fanout.screen] });
    }
    await negotiatePublish(false);
  }

  function closeConnections() {
    for (const pc of [fanout.pub, fanout.sub]) if (pc) pc.close();
    fanout.pub = null;
    fanout.sub = null;
    screenTransceiver = null;
  }

  // New connections (another forwarder, a new role): the publish offer of the new
  // connection is answered from the current placement, and an ICE restart of the
  // subscribe connection makes the control plane offer it afresh.
  function rebuild() {
    if (fanout.presence !== 'admitted' || closing) return;
    buildConnections()
      .then(() => request({ type: 'ice_restart', connection: 'subscribe' }))
      .catch((err) => console.error('fanout: rebuild', err));
  }

  // The subscribe offer's msid stream id is the publisher's participant id: its first
  // video track is the camera, a further one the screen share.
  function onRemoteTrack(e) {
    const stream = e.streams[0];
    if (!stream) return;
    const who = stream.id;
    const fig = tile(who);
    const video = fig.querySelector('video');
    if (e.track.kind === 'video' && video.srcObject && video.srcObject.getVideoTracks().length > 0
        && !video.srcObject.getVideoTracks().includes(e.track)) {
      const screen = tile(`${who}:screen`, `${nameOf(who)} (screen)`);
      screen.classList.add('screen');
      screen.querySelector('video').srcObject = new MediaStream([e.track]);
      e.track.onended = () => removeTile(`${who}:screen`);
      return;
    }
    if (!video.srcObject) video.srcObject = new MediaStream();
    video.srcObject.addTrack(e.track);
    e.track.onended = () => video.srcObject?.removeTrack(e.track);
  }

  function tile(key, label) {
    let fig = tiles.get(key);
    if (!fig) {
      fig = document.createElement('figure');
      const video = document.createElement('video');
      video.autoplay = true;
      video.playsInline = true;
      fig.append(video, document.createElement('figcaption'));
      tiles.set(key, fig);
      if (key === 'local') $('tiles').prepend(fig); else $('tiles').append(fig);
    }
    fig.dataset.participant = key;
    fig.querySelector('figcaption').textContent = label || nameOf(key);
    return fig;
  }

  function removeTile(key) {
    const fig = tiles.get(key);
    if (fig) { fig.remove(); tiles.delete(key); }
  }

  // ---------------------------------------------------------------- controls

  function updateToggles() {
    const a = fanout.local?.getAudioTracks()[0];
    const v = fanout.local?.getVideoTracks()[0];
    const micOff = !a || !a.enabled;
    const camOff = !v || !v.enabled;
    $('mic').textContent = micOff ? 'Unmute microphone' : 'Mute microphone';
    $('mic').setAttribute('aria-pressed', String(micOff));
    $('cam').textContent = camOff ? 'Turn camera on' : 'Turn camera off';
    $('cam').setAttribute('aria-pressed', String(camOff));
  }

  function applyOwnMute(audioMuted, videoMuted) {
    for (const t of fanout.local?.getAudioTracks() || []) t.enabled = !audioMuted;
    for (const t of fanout.local?.getVideoTracks() || []) t.enabled = !videoMuted;
    updateToggles();
  }

  async function toggle(kind) {
    const track = kind === 'audio' ? fanout.local?.getAudioTracks()[0] : fanout.local?.getVideoTracks()[0];
    if (!track) { alertText(`No ${kind === 'audio' ? 'microphone' : 'camera'}.`); return; }
    const muted = track.enabled; // enabled now → muting
    track.enabled = !muted;
    updateToggles();
    try {
      await request(kind === 'audio' ? { type: 'set_mute', audio_muted: muted } : { type: 'set_mute', video_muted: muted });
    } catch (err) {
      track.enabled = muted; // refused: back as it was
      updateToggles();
      alertText(err.message);
    }
  }

  async function startShare() {
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    } catch { return; }
    try {
      await request({ type: 'screenshare', active: true });
    } catch (err) {
      for (const t of stream.getTracks()) t.stop();
      alertText(err.message);
      return;
    }
    fanout.screen = stream;
    const [track] = stream.getVideoTracks();
    track.onended = () => stopShare(true);
    if (fanout.pub) {
      screenTransceiver = fanout.pub.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      negotiatePublish(false);
    }
    $('share').textContent = 'Stop sharing';
    $('share').setAttribute('aria-pressed', 'true');
  }

  function stopShare(tellServer) {
    if (!fanout.screen) return;
    for (const t of fanout.screen.getTracks()) t.stop();
    fanout.screen = null;
    if (screenTransceiver && fanout.pub) {
      screenTransceiver.stop(); // its m-section is rejected in the next offer
      screenTransceiver = null;
      negotiatePublish(false);
    }
    if (tellServer) request({ type: 'screenshare', active: false }).catch((err) => alertText(err.message));
    $('share').textContent = 'Share screen';
    $('share').setAttribute('aria-pressed', 'false');
  }

  function leave() {
    closing = true;
    send({ type: 'leave' });
    end('You left the meeting.');
  }

  function end(reason) {
    closeConnections();
    for (const s of [fanout.local, fanout.screen]) for (const t of s?.getTracks() || []) t.stop();
    fanout.local = null;
    fanout.screen = null;
    for (const key of [...tiles.keys()]) removeTile(key);
    sessionStorage.removeItem(tokenKey);
    if (fanout.ws && fanout.ws.readyState <= WebSocket.OPEN) fanout.ws.close(1000);
    fanout.me = null;
    $('ended-reason').textContent = reason;
    status('');
    show('ended');
  }

  function renderPeople() {
    const list = $('people');
    list.replaceChildren();
    const people = Object.values(fanout.participants).filter((p) => p.presence !== 'left');
    people.sort((a, b) => (a.presence === b.presence ? 0 : a.presence === 'waiting' ? -1 : 1));
    for (const p of people) {
      const li = document.createElement('li');
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = `${p.id === fanout.me ? `${p.display_name} (you)` : p.display_name}${p.role === 'host' ? ' · host' : ''}`;
      const flags = document.createElement('span');
      flags.className = 'flags';
      flags.textContent = [
        p.presence === 'waiting' ? 'waiting' : '',
        p.audio_muted ? 'mic off' : '',
        p.video_muted ? 'camera off' : '',
        p.screen_sharing ? 'sharing' : '',
        p.breakout ? `in ${fanout.breakouts[p.breakout] || 'a room'}` : '',
      ].filter(Boolean).join(' · ');
      li.append(name, flags);
      if (isHost() && p.id !== fanout.me) li.append(...hostControls(p));
      list.append(li);
    }
    const rooms = $('breakouts');
    rooms.replaceChildren();
    for (const [id, name] of Object.entries(fanout.breakouts)) {
      const li = document.createElement('li');
      li.textContent = name;
      li.dataset.breakout = id;
      rooms.append(li);
    }
  }

  function button(text, label, onClick) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = text;
    b.setAttribute('aria-label', label);
    b.onclick = () => onClick().catch((err) => alertText(err.message));
    return b;
  }

  function hostControls(p) {
    if (p.presence === 'waiting') {
      return [
        button('Admit', `Admit ${p.display_name}`, () => request({ type: 'admit', participant_id: p.id })),
        button('Deny', `Deny ${p.display_name}`, () => request({ type: 'deny', participant_id: p.id })),
      ];
    }
    const controls = [];
    if (!p.audio_muted) {
      controls.push(button('Mute', `Mute ${p.display_name}`,
        () => request({ type: 'mute_participant', participant_id: p.id, audio_muted: true })));
    }
    const rooms = Object.entries(fanout.breakouts);
    if (rooms.length > 0) {
      const select = document.createElement('select');
      select.setAttribute('aria-label', `Room for ${p.display_name}`);
      select.append(new Option('Main room', ''));
      for (const [id, name] of rooms) select.append(new Option(name, id, false, p.breakout === id));
      if (!p.breakout) select.value = '';
      select.onchange = () => {
        const msg = { type: 'move_to_breakout', participant_id: p.id };
        if (select.value) msg.breakout_id = select.value;
        request(msg).catch((err) => alertText(err.message));
      };
      controls.push(select);
    }
    return controls;
  }

  // ---------------------------------------------------------------- start

  async function start() {
    let info;
    try {
      const r = await fetch(`/v1/meetings/${encodeURIComponent(meetingId)}/join`);
      info = await r.json();
      if (!r.ok) throw new Error(info.message || r.statusText);
    } catch (err) {
      $('title').textContent = 'Meeting not found';
      alertText(err.message);
      return;
    }
    $('title').textContent = info.title;
    document.title = `${info.title} · Fanout`;
    if (info.state !== 'open') { end('This meeting has ended.'); $('rejoin').hidden = true; return; }
    $('passcode-row').hidden = !info.passcode_required;
    $('passcode').required = info.passcode_required;
    if (info.kind === 'webinar') { $('join-mic').checked = false; $('join-cam').checked = false; }

    const token = sessionStorage.getItem(tokenKey);
    if (token) {
      status('Rejoining…');
      connect({ type: 'join', join_token: token });
      return;
    }
    show('prejoin');
    $('name').focus();
  }

  $('join-form').onsubmit = (e) => {
    e.preventDefault();
    closing = false;
    joinInput = {
      name: $('name').value.trim(),
      passcode: $('passcode').value,
      hostKey: $('host-key').value,
      mic: $('join-mic').checked,
      cam: $('join-cam').checked,
    };
    $('join-button').disabled = true;
    alertText('');
    status('Joining…');
    connect(joinMessage());
  };
  for (const b of document.querySelectorAll('.leave')) b.onclick = leave;
  $('mic').onclick = () => toggle('audio');
  $('cam').onclick = () => toggle('video');
  $('share').onclick = () => (fanout.screen ? stopShare(true) : startShare());
  $('breakout-form').onsubmit = (e) => {
    e.preventDefault();
    const names = $('breakout-names').value.split(',').map((s) => s.trim()).filter(Boolean);
    if (names.length === 0) return;
    request({ type: 'create_breakouts', names }).then(() => { $('breakout-names').value = ''; }, (err) => alertText(err.message));
  };
  $('close-breakouts').onclick = () => request({ type: 'close_breakouts' }).catch((err) => alertText(err.message));
  $('rejoin').onclick = () => { $('join-button').disabled = false; show('prejoin'); $('name').focus(); };

  start();
})();
