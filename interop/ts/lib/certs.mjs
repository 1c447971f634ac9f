// Throwaway TLS material for the tests that run a machine with a certificate (openssl).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const OPENSSL = process.env.OPENSSL_BIN ?? '/usr/bin/openssl';

function openssl(args, input) {
  return execFileSync(OPENSSL, args, { input, stdio: ['pipe', 'pipe', 'pipe'], timeout: 20_000 });
}

/**
 * A throwaway CA and a server certificate (P-256, IP SAN `ip`) signed by it, in dir.
 * Returns {caPem, certFile, keyFile, spki}: spki is the base64 SHA-256 of the server certificate's
 * SubjectPublicKeyInfo (what --ignore-certificate-errors-spki-list takes).
 */
export function makeCertificates(dir, ip) {
  const f = (name) => path.join(dir, name);
  openssl([
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=tether interop throwaway CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  openssl([
    'req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', f('key.pem'), '-out', f('server.csr'), '-subj', `/CN=${ip}`,
  ]);
  writeFileSync(
    f('server.ext'),
    [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
      `subjectAltName=IP:${ip}`,
      '',
    ].join('\n'),
  );
  openssl([
    'x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-set_serial', '1',
    '-days', '2', '-sha256', '-extfile', f('server.ext'), '-out', f('cert.pem'),
  ]);
  const pubkey = openssl(['x509', '-in', f('cert.pem'), '-noout', '-pubkey']);
  const der = openssl(['pkey', '-pubin', '-outform', 'DER'], pubkey);
  const spki = openssl(['dgst', '-sha256', '-binary'], der).toString('base64');

  const caPem = readFileSync(f('ca.pem'), 'utf8');
  const cert = new X509Certificate(readFileSync(f('cert.pem')));
  assert.ok(cert.verify(new X509Certificate(caPem).publicKey), 'server certificate not signed by the throwaway CA');
  assert.ok(cert.checkIP(ip), `server certificate has no IP SAN ${ip}: ${cert.subjectAltName}`);
  return { caPem, certFile: f('cert.pem'), keyFile: f('key.pem'), spki };
}

