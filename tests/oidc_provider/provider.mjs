// A real OpenID provider (node-oidc-provider) for code-hub's single sign-on tests. Never for production.
//
// Configuration (environment, or --name=value arguments):
//   PORT                      a free port on 127.0.0.1 (required); the issuer is http://127.0.0.1:<port>
//   CLIENT_ID, CLIENT_SECRET  the one registered client (confidential, client_secret_basic, PKCE required)
//   REDIRECT_URIS             comma-separated redirect URIs of that client
//   POST_LOGOUT_REDIRECT_URIS comma-separated post-logout redirect URIs of that client
//   CONTROL_TOKEN             secret the test sends (X-Control-Token) to reach the /_test/ control routes
//   ID_TOKEN_CLAIMS           "1": the ID token carries the scopes' claims (groups, names) as Keycloak, Entra ID
//                             and Okta do by default; otherwise only userinfo has them (OpenID Core 5.4)
//
// Users: alice (password alice-pass, groups devs and hub-admins) and bob (password bob-pass, group designers).
// Control routes (POST, JSON body, X-Control-Token header):
//   /_test/groups {"user": "bob", "groups": ["devs"]}        change a user's groups claim
//   /_test/fault  {"mode": "none|audience|expired|signature|nonce|unsigned"}
//                 make the token endpoint hand out bad ID tokens (for another client, expired, tampered after
//                 signing, answering another sign-in, or with "alg": "none")
//   /_test/timings {}  the provider's own milliseconds per token, userinfo and JWKS request since the last call
//                 (the hub's bench subtracts them from its callback's time)
// The first line on stdout is {"issuer": "..."} once the provider listens.

import { createServer } from 'node:http';
import { randomBytes, timingSafeEqual } from 'node:crypto';

import { Provider } from 'oidc-provider';
import { SignJWT, decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair, importJWK } from 'jose';

const options = { ...process.env };
for (const arg of process.argv.slice(2)) {
  const match = /^--([A-Za-z_]+)=(.*)$/s.exec(arg);
  if (match) options[match[1].toUpperCase()] = match[2];
}
const list = (value) => (value || '').split(',').map((s) => s.trim()).filter(Boolean);

const USERS = {
  alice: { sub: 'sub-0001-alice', password: 'alice-pass', name: 'Alice Example', groups: ['devs', 'hub-admins'] },
  bob: { sub: 'sub-0002-bob', password: 'bob-pass', name: 'Bob Example', groups: ['designers'] },
};
const bySub = new Map(Object.entries(USERS).map(([login, user]) => [user.sub, { login, ...user }]));
const FAULTS = new Set(['none', 'audience', 'expired', 'signature', 'nonce', 'unsigned']);
let fault = 'none';
const TIMED = new Set(['/token', '/me', '/jwks']);
let timings = [];

const controlToken = options.CONTROL_TOKEN || '';
if (controlToken.length < 16) throw new Error('CONTROL_TOKEN must be at least 16 characters');

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await exportJWK(privateKey)), kid: `test-${randomBytes(4).toString('hex')}`, alg: 'RS256', use: 'sig' };
const signingKey = await importJWK(signingJwk, 'RS256');

async function findAccount(ctx, sub) {
  const user = bySub.get(sub);
  if (!user) return undefined;
  return {
    accountId: sub,
    async claims() {
      return {
        sub,
        name: user.name,
        preferred_username: user.login,
        email: `${user.login}@example.test`,
        email_verified: true,
        groups: [...user.groups],
      };
    },
  };
}

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${title}</title></head><body><h1>${title}</h1>${body}</body></html>`;
}

function loginForm(uid, message = '') {
  const error = message ? `<p id="error">${message}</p>` : '';
  return page('Test IdP sign-in', `${error}
<form method="post" action="/interaction/${uid}/login" id="idp-login">
  <label>Login <input name="login" id="idp-username" autocomplete="off"></label>
  <label>Password <input name="password" id="idp-password" type="password"></label>
  <button type="submit" id="idp-submit">Sign in</button>
</form>`);
}

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function sameSecret(given) {
  const a = Buffer.from(given || '');
  const b = Buffer.from(controlToken);
  return a.length === b.length && timingSafeEqual(a, b);
}

async function badIdToken(idToken) {
  const header = decodeProtectedHeader(idToken);
  const claims = decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  if (fault === 'signature') {
    const [head, , signature] = idToken.split('.');
    const body = Buffer.from(JSON.stringify({ ...claims, groups: ['hub-admins'] })).toString('base64url');
    return `${head}.${body}.${signature}`;
  }
  if (fault === 'unsigned') {
    const head = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
    return `${head}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.`;
  }
  if (fault === 'audience') claims.aud = 'some-other-client';
  if (fault === 'nonce') claims.nonce = 'a-nonce-of-another-sign-in';
  if (fault === 'expired') Object.assign(claims, { iat: now - 7200, exp: now - 3600 });
  return new SignJWT(claims).setProtectedHeader(header).sign(signingKey);
}

const provider = new Provider(`http://127.0.0.1:${options.PORT || 0}`, {
  clients: [
    {
      client_id: options.CLIENT_ID,
      client_secret: options.CLIENT_SECRET,
      redirect_uris: list(options.REDIRECT_URIS),
      post_logout_redirect_uris: list(options.POST_LOGOUT_REDIRECT_URIS),
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'email', 'groups'],
  conformIdTokenClaims: options.ID_TOKEN_CLAIMS !== '1',
  pkce: { required: () => true },
  jwks: { keys: [signingJwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: { devInteractions: { enabled: false }, rpInitiatedLogout: { enabled: true } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount,
  async loadExistingGrant(ctx) {
    // First-party test client: consent is implied, the grant covers what was asked for.
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ accountId: ctx.oidc.session.accountId, clientId: ctx.oidc.client.clientId });
    grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
    await grant.save();
    return grant;
  },
  ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600 },
});

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/_test/')) {
    if (ctx.method !== 'POST' || !sameSecret(ctx.get('x-control-token'))) {
      ctx.status = 403;
      ctx.body = { error: 'forbidden' };
      return;
    }
    const body = JSON.parse((await readBody(ctx.req)) || '{}');
    if (ctx.path === '/_test/groups' && USERS[body.user] && Array.isArray(body.groups)) {
      USERS[body.user].groups = body.groups.map(String);
      bySub.get(USERS[body.user].sub).groups = USERS[body.user].groups;
      ctx.body = { user: body.user, groups: USERS[body.user].groups };
    } else if (ctx.path === '/_test/timings') {
      ctx.body = { timings };
      timings = [];
    } else if (ctx.path === '/_test/fault' && FAULTS.has(body.mode)) {
      fault = body.mode;
      ctx.body = { fault };
    } else {
      ctx.status = 400;
      ctx.body = { error: 'bad control request' };
    }
    return;
  }
  const interaction = /^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/.exec(ctx.path);
  if (interaction) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const [, uid, submit] = interaction;
    if (details.uid !== uid) throw new Error('interaction mismatch');
    ctx.set('cache-control', 'no-store');
    if (!submit && ctx.method === 'GET') {
      ctx.type = 'html';
      ctx.body = loginForm(uid);
      return;
    }
    if (submit && ctx.method === 'POST') {
      const form = new URLSearchParams(await readBody(ctx.req));
      const user = USERS[form.get('login') || ''];
      if (!user || user.password !== form.get('password')) {
        ctx.status = 401;
        ctx.type = 'html';
        ctx.body = loginForm(uid, 'Unknown login or wrong password.');
        return;
      }
      const returnTo = await provider.interactionResult(ctx.req, ctx.res, { login: { accountId: user.sub } });
      ctx.status = 303;
      ctx.redirect(returnTo);
      return;
    }
    ctx.status = 405;
    return;
  }
  const started = process.hrtime.bigint();
  await next();
  if (fault !== 'none' && ctx.path === '/token' && ctx.status === 200 && ctx.body?.id_token) {
    ctx.body = { ...ctx.body, id_token: await badIdToken(ctx.body.id_token) };
  }
  if (TIMED.has(ctx.path) && timings.length < 100000) {
    timings.push({ path: ctx.path, ms: Number(process.hrtime.bigint() - started) / 1e6 });
  }
});

const server = createServer(provider.callback());
server.listen(Number(options.PORT || 0), '127.0.0.1', () => {
  const { port } = server.address();
  if (!options.PORT || Number(options.PORT) !== port) {
    console.error('PORT must name a free port: the issuer URL carries it');
    process.exit(2);
  }
  console.log(JSON.stringify({ issuer: provider.issuer }));
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
