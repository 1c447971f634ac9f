// A minimal gRPC-Web client for watching a machine from Node while a browser drives it over
// WebRTC: MotorService.IsPowered encoded and decoded by hand (no SDK, no session, no WebRTC).

function frame(msg) {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(msg.length, 1);
  return Buffer.concat([head, msg]);
}

function readVarint(buf, off) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const b = buf[off++];
    value += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) return [value, off];
    shift += 7;
  }
}

/** IsPoweredResponse {bool is_on = 1; double power_pct = 2;} → [isOn, powerPct]. */
function decodeIsPowered(msg) {
  let on = false;
  let pct = 0;
  for (let off = 0; off < msg.length; ) {
    let key;
    [key, off] = readVarint(msg, off);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) {
      let v;
      [v, off] = readVarint(msg, off);
      if (field === 1) on = v !== 0;
    } else if (wire === 1) {
      if (field === 2) pct = msg.readDoubleLE(off);
      off += 8;
    } else if (wire === 2) {
      let len;
      [len, off] = readVarint(msg, off);
      off += len;
    } else if (wire === 5) {
      off += 4;
    } else {
      throw new Error(`unexpected wire type ${wire}`);
    }
  }
  return [on, pct];
}

/** Calls MotorService.IsPowered on http://address over gRPC-Web; resolves to [isOn, powerPct]. */
export async function isPowered(address, name, timeoutMs = 2000) {
  const nameBytes = Buffer.from(name);
  const req = Buffer.concat([Buffer.from([0x0a, nameBytes.length]), nameBytes]);
  const res = await fetch(`http://${address}/viam.component.motor.v1.MotorService/IsPowered`, {
    method: 'POST',
    headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1' },
    body: frame(req),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const body = Buffer.from(await res.arrayBuffer());
  let data;
  let trailer = '';
  for (let off = 0; off + 5 <= body.length; ) {
    const len = body.readUInt32BE(off + 1);
    const payload = body.subarray(off + 5, off + 5 + len);
    if (body[off] & 0x80) trailer = payload.toString('latin1');
    else data = payload;
    off += 5 + len;
  }
  const status = /grpc-status:\s*(\d+)/i.exec(trailer)?.[1] ?? res.headers.get('grpc-status');
  if (status !== '0' || data === undefined) {
    throw new Error(`IsPowered(${name}) failed: HTTP ${res.status}, grpc-status ${status}, trailer ${JSON.stringify(trailer)}`);
  }
  return decodeIsPowered(data);
}
