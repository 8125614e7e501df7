export { loadProfile, type Profile, profilePath, updateProfile } from './profile.js';
